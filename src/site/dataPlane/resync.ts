import type * as grpc from "@grpc/grpc-js";
import type { JsonValue } from "../../ledger/index.js";
import type { ReplicateRequest, ReplicateResponse } from "../../gen/qreplica/v1/replication.js";
import type { PointWrite } from "../../storage/index.js";
import { resyncChunkBytes } from "../../transport/index.js";
import type { ChunkDigestName } from "../../common/chunkDigest.js";
import { digestToWire, writeWithBackpressure } from "../../transport/index.js";
import type { SiteContext } from "../siteContext.js";

const HASHES_PER_MESSAGE = 4096;

/**
 * Resync by comparison: after a RESYNC CycleBegin, the hash of every chunk of each disk's
 * comparison image (the newest point, or a reverse replication's seed) goes to the sender, which
 * then ships only the chunks whose hash differs. A disk without one gets an empty list (everything
 * differs). The sender compares while the hashes stream in. The newest point's hashes come from
 * its chunk hash index when it has one (written as the point was); otherwise the image is read
 * through its chain and hashed. Either way they become the base of the new point's own index.
 */
export async function sendSeedHashes(
  ctx: SiteContext,
  call: grpc.ServerDuplexStream<ReplicateRequest, ReplicateResponse>,
  cycle: { vmId: string; generation: number; seq: number; disks: Array<{ diskId: string; sizeBytes: number }>; point: PointWrite },
  digest: ChunkDigestName,
): Promise<void> {
  const started = Date.now();
  const seeds = await ctx.relationships.comparisonImages(cycle.vmId);
  let hashedBytes = 0;
  let indexedBytes = 0;
  const unindexed: Record<string, string> = {};
  // When the first hashes went out, and how long the indexes took to load (ms since started).
  let firstSentMs: number | undefined;
  let loadMs = 0;
  for (const { diskId, sizeBytes } of cycle.disks) {
    const chunkBytes = resyncChunkBytes(sizeBytes);
    const seed = seeds.find((s) => s.diskId === diskId);
    const sent: Buffer[] = [];
    let first = 0;
    const flush = async (last: boolean) => {
      const batch = sent.slice(first);
      await writeWithBackpressure(call, {
        body: {
          $case: "resyncHashes",
          value: {
            generation: BigInt(cycle.generation),
            cycleSequence: BigInt(cycle.seq),
            diskId,
            chunkBytes,
            firstChunk: BigInt(first),
            hashes: batch,
            last,
            digest: digestToWire(digest),
          },
        },
      });
      first += batch.length;
      firstSentMs ??= Date.now() - started;
    };
    const loading = Date.now();
    const index =
      seed?.pointSeq === undefined
        ? { unusable: "the comparison image is a seed" }
        : digest !== ctx.storage.indexDigest
          ? { unusable: `the agent compares with ${digest}, the index holds ${ctx.storage.indexDigest}` }
          : ctx.storage.loadChunkHashes(cycle.vmId, diskId, seed.pointSeq, sizeBytes);
    loadMs += Date.now() - loading;
    if ("hashes" in index) {
      for (let at = 0; at < index.hashes.length; at += 32) {
        sent.push(index.hashes.subarray(at, at + 32));
        if (sent.length - first === HASHES_PER_MESSAGE) await flush(false);
      }
      indexedBytes += sizeBytes;
    } else if (seed) {
      unindexed[diskId] = index.unusable;
      for await (const h of ctx.storage.seedChunkHashes(seed.imagePath, chunkBytes, digest)) {
        hashedBytes += chunkBytes;
        sent.push(h);
        if (sent.length - first === HASHES_PER_MESSAGE) await flush(false);
      }
    }
    await flush(true);
    // The new point is written over the comparison image: its index starts from these hashes
    // (none when they are in another digest than the index's: the next resync then reads).
    cycle.point.setHashBase(diskId, seed && digest === ctx.storage.indexDigest ? Buffer.concat(sent) : undefined);
  }
  ctx.logger.info(
    { vm: cycle.vmId, seq: cycle.seq, digest, hashedBytes, indexedBytes, unindexed, loadMs, firstSentMs, ms: Date.now() - started, images: seeds.map((s) => s.imagePath) },
    "resync: replica chunk hashes sent",
  );
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
