/**
 * Which points are safe to fail over to, and which may not go: the suspect points' cut-off
 * (encryption signal) and the policy's locks. Read by commands, the site's retention and failover.
 */
import type { RecoveryPoint, RelationshipState } from "./relationshipState.js";

/** The name `failover --point` and runbooks use for the newest point before the first suspect one. */
export const LAST_CLEAN_POINT = "last-clean";

/**
 * The newest openable point cut before the first suspect point not cleared; with no suspect
 * point, the newest point. Undefined when every point is suspect or newer than one.
 */
export function lastCleanPoint(s: RelationshipState): RecoveryPoint | undefined {
  const first = s.suspectPoints[0];
  const open = s.points.filter((p) => !p.merging);
  if (!first) return open.at(-1);
  return open.filter((p) => p.cycleSeq < first.cycleSeq).at(-1);
}

/** Whether the point's lock still holds at `nowMs`. */
export function isLocked(p: RecoveryPoint, nowMs: number): boolean {
  return p.lockedUntil !== undefined && Date.parse(p.lockedUntil) > nowMs;
}
