import { RELATIONSHIP_STREAM_PREFIX, completeMerge, startMerge, vmIdOfStream, type RelationshipState } from "../../ledger/index.js";
import type { RetentionSpec } from "../../policy/retentionPlan.js";
import { finishMerge, nextMerge } from "../retention.js";
import type { RelationshipDeps } from "./relationshipDeps.js";

/** The states in which this site runs retention on its chains (as startMerge allows). */
const RETENTION_STATES: readonly string[] = ["replicating", "paused", "resync-required", "resynchronising"];

/**
 * This VM's retention: the one input the VM's effective policy replaces (see retention.ts).
 * Until then the site's default, else the relationship's own point count.
 */
export async function retentionFor(deps: RelationshipDeps, vmId: string, state?: RelationshipState): Promise<RetentionSpec> {
  return deps.options.retentionFor(vmId, state ?? (await deps.load(vmId)));
}

/**
 * Merges away every point retention does not keep, one step at a time (see retentionStep).
 * Used where nothing else waits on the VM; the site itself runs steps one by one.
 */
export async function applyRetention(deps: RelationshipDeps, vmId: string): Promise<void> {
  while (await retentionStep(deps, vmId));
}

/**
 * One merge: an unfinished one first (an image held by another process, a crash: otherwise its
 * point would stay listed, half merged, and retention would stop for good), else the oldest
 * point the plan drops that no running test failover reads through. Returns whether another
 * step may be due. A step rewrites one point's worth of changes, so a cycle waits for at most one.
 */
export async function retentionStep(deps: RelationshipDeps, vmId: string): Promise<boolean> {
  // The next cycle's point is open: its commit runs the next step.
  if (deps.storage.isWriting(vmId)) return false;
  const state = await deps.load(vmId);
  if (!RETENTION_STATES.includes(state.state)) return false;
  if (state.points.some((p) => p.merging)) return finishPendingMerge(deps, state);
  const next = nextMerge(state, await retentionFor(deps, vmId, state), deps.options.now(), deps.options.alsoHeld(vmId, state));
  if (next.waiting.length) deps.logger.debug({ vm: vmId, waiting: next.waiting }, "retention merges wait for a running test failover");
  if (!next.pointId) return false;
  const pointId = next.pointId;
  const started = await deps.exec(vmId, (s) => startMerge(s, { pointId, now: new Date(deps.options.now()).toISOString() }));
  if (started.events.length === 0) return false;
  return finishPendingMerge(deps, started.newState);
}

/**
 * After a restart: finish interrupted merges, then remove images the ledger does not know.
 * `known` lists the VMs (from the read models); without it the whole ledger is read for them.
 */
export async function recoverAfterRestart(deps: RelationshipDeps, known?: readonly string[]): Promise<string[]> {
  const vmIds = new Set<string>(known);
  if (!known) {
    for (const e of await deps.store.readAll({ streamPrefix: RELATIONSHIP_STREAM_PREFIX })) {
      const vmId = vmIdOfStream(e.stream);
      if (vmId) vmIds.add(vmId);
    }
  }
  for (const vmId of vmIds) {
    const state = await deps.load(vmId);
    if (state.points.some((p) => p.merging)) await finishPendingMerge(deps, state);
    const after = await deps.load(vmId);
    // A completed failover's VM runs on its point's chain: those files are not orphans.
    const known = new Set([...after.points.flatMap((p) => p.disks.map((d) => d.imagePath)), ...(after.failoverChainImages ?? [])]);
    deps.storage.removeOrphans(vmId, known);
    deps.storage.pruneChunkHashes(vmId, after.points.at(-1)?.cycleSeq);
  }
  return [...vmIds];
}

function finishPendingMerge(deps: RelationshipDeps, state: RelationshipState): Promise<boolean> {
  return finishMerge(state, deps.storage, async (input) => void (await deps.exec(state.vmId, (s) => completeMerge(s, input))), deps.logger);
}
