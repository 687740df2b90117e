/**
 * The site's retention input and its choice of the next merge. Which points are kept is the
 * planner's (src/policy/retentionPlan.ts); this file turns a relationship's state into its input
 * and says which merge to run next, one at a time (each merge is one short step of the VM's
 * serialized work, so incoming cycles wait for at most one).
 */
import { existsSync } from "node:fs";
import { faultPoint } from "../common/faultPoints.js";
import type { Logger } from "../common/logger.js";
import { isLocked, lastCleanPoint, type CompleteMergeInput, type RecoveryPoint, type RelationshipState } from "../ledger/index.js";
import type { ReplicaStorage } from "../storage/index.js";
import { planRetention, type PlanPoint, type RetentionPlan, type RetentionSpec } from "../policy/retentionPlan.js";

/**
 * Where a VM's retention comes from. The site's default (site.json `defaultRetention`, else the
 * relationship's own `maxPoints` as today's single point count) until the VM's effective policy
 * provides `retention: { tiers, minPoints }`: that work replaces this function, nothing else.
 */
export type RetentionSource = (vmId: string, state: RelationshipState) => RetentionSpec | Promise<RetentionSpec>;

export function siteDefaultRetention(site: { defaultRetention?: RetentionSpec }): RetentionSource {
  return (_vmId, state) => site.defaultRetention ?? { tiers: [], minPoints: state.retention.maxPoints };
}

/**
 * The planner's view of the relationship's points: held ones are under a test failover or the
 * failover; locked ones under their policy's lock at `nowMs`; and while a suspect point stands,
 * the last clean point before it. `alsoHeld`: points another part of the site still needs (extended
 * replication's points not yet forwarded).
 */
export function planPoints(state: RelationshipState, nowMs = Date.now(), alsoHeld: ReadonlySet<string> = new Set()): PlanPoint[] {
  const held = new Set([...Object.values(state.testFailovers).map((t) => t.pointId), ...alsoHeld]);
  if (state.failover?.pointId) held.add(state.failover.pointId);
  const lastClean = state.suspectPoints.length > 0 ? lastCleanPoint(state)?.pointId : undefined;
  return state.points.map((p) => ({
    ...(isLocked(p, nowMs) ? { locked: true } : {}),
    ...(p.pointId === lastClean ? { lastClean: true } : {}),
    id: p.pointId,
    seq: p.cycleSeq,
    cutoffMs: Date.parse(p.cutoffAt),
    consistency: p.consistency,
    held: held.has(p.pointId),
  }));
}

export interface NextMerge {
  plan: RetentionPlan;
  /** The oldest point to merge away that no running test failover reads through; none: nothing to do now. */
  pointId: string | undefined;
  /** Points to merge away that wait for a test failover to stop. */
  waiting: string[];
}

/**
 * A merge rewrites the merged point's successor (or the base) and deletes an image: a running test
 * on that point or any later one reads them, so those merges wait (startMerge refuses them too).
 */
export function nextMerge(state: RelationshipState, spec: RetentionSpec, nowMs: number, alsoHeld?: ReadonlySet<string>): NextMerge {
  const plan = planRetention(planPoints(state, nowMs, alsoHeld), spec, nowMs);
  const order = new Map(state.points.map((p, i) => [p.pointId, i]));
  // Unknown test points count as the newest: conservative.
  const highestTest = Math.max(...Object.values(state.testFailovers).map((t) => order.get(t.pointId) ?? Number.POSITIVE_INFINITY));
  const free = plan.drop.filter((id) => (order.get(id) ?? Number.NEGATIVE_INFINITY) > highestTest);
  return { plan, pointId: free[0], waiting: plan.drop.filter((id) => !free.includes(id)) };
}

/**
 * Rewrites the images of the merge the ledger shows under way, records it, and only then deletes
 * the merged-away overlay: the ledger never names an image that is gone, and a crash at any step
 * leaves either a repeatable merge or an orphan that recovery removes. The oldest point is folded
 * under its successor (the base takes the successor's data); a later one into its successor
 * (rebased onto the point below it). Returns whether a merge was recorded.
 */
export async function finishMerge(state: RelationshipState, storage: ReplicaStorage, record: (input: CompleteMergeInput) => Promise<void>, logger: Logger): Promise<boolean> {
  const index = state.points.findIndex((p) => p.merging);
  const point = state.points[index];
  const into = state.points[index + 1];
  if (!point || !into) return false;
  const started = performance.now();
  const imageOf = (p: RecoveryPoint | undefined, diskId: string) => p?.disks.find((d) => d.diskId === diskId)?.imagePath;
  const remove: string[] = [];
  if (index === 0) {
    const after = state.points[index + 2];
    for (const d of into.disks) {
      const base = imageOf(point, d.diskId);
      if (!base || base === d.imagePath) continue;
      // Repeatable: an overlay deleted by an earlier run (which then crashed) is already in the base.
      if (existsSync(d.imagePath)) {
        await storage.mergeIntoBase(base, d.imagePath, imageOf(after, d.diskId));
        remove.push(d.imagePath);
      }
    }
    faultPoint("crash-before-merge-recorded");
    await record({ pointId: point.pointId, disks: into.disks.map((d) => ({ diskId: d.diskId, imagePath: imageOf(point, d.diskId) ?? d.imagePath })) });
  } else {
    const below = state.points[index - 1];
    for (const d of into.disks) {
      const folded = imageOf(point, d.diskId);
      if (!folded || folded === d.imagePath) continue;
      // Repeatable: once the successor is rebased below, the folded image is no longer read.
      if (existsSync(folded)) await storage.foldIntoNext(imageOf(below, d.diskId), d.imagePath);
      remove.push(folded);
    }
    faultPoint("crash-before-merge-recorded");
    await record({ pointId: point.pointId, disks: into.disks.map((d) => ({ diskId: d.diskId, imagePath: d.imagePath })) });
  }
  for (const path of remove) storage.removeMergedImage(path);
  const ms = Math.round(performance.now() - started);
  logger.info(
    { vm: state.vmId, dropped: point.pointId, into: into.pointId, oldest: index === 0, ms },
    index === 0 ? "oldest recovery point merged into the base" : "recovery point thinned into the next one",
  );
  return true;
}
