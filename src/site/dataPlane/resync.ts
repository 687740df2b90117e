import type * as grpc from "@grpc/grpc-js";
import type { JsonValue } from "../../ledger/index.js";
import type { ReplicateRequest, ReplicateResponse } from "../../gen/qreplica/v1/replication.js";
import { resyncChunkBytes } from "../../storage/index.js";
import { writeWithBackpressure } from "../../transport/index.js";
import type { SiteContext } from "../siteContext.js";

const HASHES_PER_MESSAGE = 4096;

/**
 * Resync by comparison: after a RESYNC CycleBegin, the hash of every chunk of each disk's
 * comparison image (the newest point read through its chain, or a reverse replication's seed)
 * goes to the sender, which then ships only the chunks whose hash differs. A disk without one
 * gets an empty list (everything differs). The sender compares while the hashes stream in.
 */
export async function sendSeedHashes(
  ctx: SiteContext,
  call: grpc.ServerDuplexStream<ReplicateRequest, ReplicateResponse>,
  cycle: { vmId: string; generation: number; seq: number; disks: Array<{ diskId: string; sizeBytes: number }> },
): Promise<void> {
  const seeds = await ctx.relationships.comparisonImages(cycle.vmId);
  const started = Date.now();
  let hashedBytes = 0;
  for (const { diskId, sizeBytes } of cycle.disks) {
    const chunkBytes = resyncChunkBytes(sizeBytes);
    const seed = seeds.find((s) => s.diskId === diskId);
    let batch: Buffer[] = [];
    let first = 0;
    const flush = async (last: boolean) => {
      await writeWithBackpressure(call, {
        body: {
          $case: "resyncHashes",
          value: { generation: BigInt(cycle.generation), cycleSequence: BigInt(cycle.seq), diskId, chunkBytes, firstChunk: BigInt(first), hashes: batch, last },
        },
      });
      first += batch.length;
      batch = [];
    };
    if (seed) {
      for await (const h of ctx.storage.seedChunkHashes(seed.imagePath, chunkBytes)) {
        hashedBytes += chunkBytes;
        batch.push(h);
        if (batch.length === HASHES_PER_MESSAGE) await flush(false);
      }
    }
    await flush(true);
  }
  ctx.logger.info({ vm: cycle.vmId, seq: cycle.seq, hashedBytes, ms: Date.now() - started, images: seeds.map((s) => s.imagePath) }, "resync: replica chunk hashes sent");
}

/** The agent validated the spec against its config; here it is only carried as a JSON object. */
export function parseVmSpec(json: string): Record<string, JsonValue> | undefined {
  if (!json) return undefined;
  try {
    const parsed = JSON.parse(json) as unknown;
    return typeof parsed === "object" && parsed !== null && !Array.isArray(parsed) ? (parsed as Record<string, JsonValue>) : undefined;
  } catch {
    return undefined;
  }
}
