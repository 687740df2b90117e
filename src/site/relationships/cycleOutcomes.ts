import { rmSync } from "node:fs";
import { faultPoint } from "../../common/faultPoints.js";
import { commitCycle, failCycle, pointIdFor, recordCycleSkipped } from "../../ledger/index.js";
import type { RelationshipDeps } from "./relationshipDeps.js";
import type { CommitInput } from "./relationshipInputs.js";
import { retentionFor } from "./retentionSteps.js";

/**
 * A received cycle's point made a recovery point: its images durable first, then the ledger's
 * CycleCommitted (invariants 1 and 5); images the ledger refused are removed.
 */
export async function commitPoint(deps: RelationshipDeps, input: CommitInput): Promise<{ pointId: string; committedAt: Date }> {
  const images = await input.point.commit();
  faultPoint("crash-after-rename-before-ledger");
  const committedAt = new Date();
  // The lock in force at the commit is recorded with the point: a later policy change cannot shorten it.
  const lockSeconds = (await retentionFor(deps, input.vmId)).lockSeconds;
  const lockedUntil = lockSeconds ? new Date(input.cutoffAt.getTime() + lockSeconds * 1000).toISOString() : undefined;
  try {
    await deps.exec(input.vmId, (s) =>
      commitCycle(s, {
        cycleSeq: input.seq,
        // A seeded first point completes the initial replication like a full one.
        kind: input.kind === "resync" && s.state === "initial-replication-in-progress" ? "full" : input.kind,
        generation: input.generation,
        cutoffAt: input.cutoffAt.toISOString(),
        committedAt: committedAt.toISOString(),
        consistency: input.consistency,
        ...(input.quiesceFailure ? { quiesceFailure: input.quiesceFailure } : {}),
        disks: images.disks.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes, imagePath: d.imagePath })),
        dataBytes: input.dataBytes,
        ...(input.diskDataBytes ? { diskDataBytes: input.diskDataBytes } : {}),
        zeroBytes: input.zeroBytes,
        wireBytes: input.wireBytes,
        extents: input.extents,
        durationMs: input.durationMs,
        comparedBytes: input.comparedBytes,
        ...(input.diskCompression && input.diskDataBytes ? { diskCompression: input.diskCompression } : {}),
        ...(lockedUntil ? { lockedUntil } : {}),
        ...(input.group ? { group: input.group } : {}),
      }),
    );
  } catch (err) {
    // Not in the ledger, so not a point: the images must go (a restart would remove them too).
    for (const d of images.disks) {
      rmSync(d.imagePath, { force: true });
      if (d.chunkHashPath) await deps.storage.indexes.forget(d.chunkHashPath, `${d.chunkHashPath}.partial`);
    }
    throw err;
  }
  deps.storage.pruneChunkHashes(input.vmId, input.seq);
  return { pointId: pointIdFor(input.seq), committedAt };
}

export async function recordFailedCycle(deps: RelationshipDeps, input: { vmId: string; seq: number; generation: number; reason: string; message: string }): Promise<void> {
  const state = await deps.load(input.vmId);
  if (state.state === "not-enabled" || input.generation !== state.generation) return;
  if (state.state !== "initial-replication-in-progress" && input.seq <= state.lastCycleSeq) return;
  await deps.exec(input.vmId, (s) => failCycle(s, { cycleSeq: input.seq, generation: input.generation, reason: input.reason, message: input.message.slice(0, 2000) }));
}

/**
 * The primary did not start a due cycle (its scratch is nearly full, say). A report of another
 * generation is a stale primary's and is ignored; a repeated code records nothing (once per
 * code while it lasts). Returns whether an event was recorded.
 */
export async function recordSkippedCycle(deps: RelationshipDeps, input: { vmId: string; generation: number; code: string; message: string; skippedAt: Date }): Promise<boolean> {
  const state = await deps.load(input.vmId);
  if (state.state === "not-enabled" || input.generation !== state.generation) return false;
  const { events } = await deps.exec(input.vmId, (s) =>
    recordCycleSkipped(s, { generation: input.generation, code: input.code, message: input.message, skippedAt: input.skippedAt.toISOString() }),
  );
  if (events.length) deps.logger.warn({ vm: input.vmId, code: input.code, message: input.message }, "the primary skips its cycles");
  return events.length > 0;
}
