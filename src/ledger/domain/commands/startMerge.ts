import { InvalidCommandInputError, MergeBlockedByTestFailoverError, MergeInProgressError, RecoveryPointLockedError, RecoveryPointUnavailableError } from "../errors.js";
import { isLocked } from "../pointSafety.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireState } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import type { ReplicationStateName } from "../states.js";

const COMMAND = "startMerge";

/** Retention only runs while this site holds the chains as a replica; a failover owns them. */
const ALLOWED: readonly ReplicationStateName[] = ["replicating", "paused", "resync-required", "resynchronising"];

export interface StartMergeInput {
  /**
   * The point to merge away (retention tiers thin the chain anywhere but at its newest point).
   * Absent: the oldest, and only when more points than `retention.maxPoints` exist.
   */
  pointId?: string;
  /** The time the point's lock is judged at (ISO); the wall clock when absent. */
  now?: string;
}

/**
 * Merges one point away into the next one, which then reads as it did. The oldest point is
 * folded under its successor (which becomes the base); a later one is folded into its successor,
 * which is rebased onto the point below. Returns no events when no merge is due, so a scheduler
 * may call it freely.
 *
 * A running test failover on the merged point or any later one blocks the merge: its VM reads the
 * merged point's image or its successor's through its backing chain, and both are rewritten or
 * deleted. Tests on earlier points do not block (their chains end below the merge). For the
 * oldest point that is every test.
 */
export function startMerge(s: RelationshipState, input: StartMergeInput = {}): RelationshipEvent[] {
  requireState(s, COMMAND, ALLOWED);
  const merging = s.points.find((p) => p.merging);
  if (merging) {
    throw new MergeInProgressError(s.vmId, merging.pointId, s.points[s.points.indexOf(merging) + 1]?.pointId ?? "?");
  }
  let index: number;
  if (input.pointId === undefined) {
    if (s.points.length <= s.retention.maxPoints) return [];
    index = 0;
  } else {
    index = s.points.findIndex((p) => p.pointId === input.pointId);
    if (index < 0)
      throw new RecoveryPointUnavailableError(
        s.vmId,
        input.pointId,
        "unknown",
        s.points.map((p) => p.pointId),
      );
    if (index === s.points.length - 1) {
      throw new InvalidCommandInputError(`${COMMAND}: ${input.pointId} is the newest recovery point of VM ${s.vmId}; retention never merges the newest point away`);
    }
  }
  const point = s.points[index];
  const into = s.points[index + 1];
  if (!point || !into) return [];
  // The policy's lock holds against every caller, retention included (its planner keeps locked points anyway).
  if (isLocked(point, input.now === undefined ? Date.now() : Date.parse(input.now))) {
    throw new RecoveryPointLockedError(s.vmId, `merging ${point.pointId} into ${into.pointId}`, [{ pointId: point.pointId, lockedUntil: point.lockedUntil ?? "" }]);
  }
  const order = new Map(s.points.map((p, i) => [p.pointId, i]));
  const blocking = Object.values(s.testFailovers)
    .filter((t) => (order.get(t.pointId) ?? Number.POSITIVE_INFINITY) >= index)
    .map((t) => t.testId)
    .sort();
  if (blocking.length > 0) throw new MergeBlockedByTestFailoverError(s.vmId, point.pointId, into.pointId, blocking);
  return [relationshipEvent("RecoveryPointMergeStarted", { pointId: point.pointId, intoPointId: into.pointId })];
}
