import { MergeInProgressError, RecoveryPointLockedError, TestFailoversRunningError } from "../errors.js";
import { isLocked } from "../pointSafety.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { chainDisks, requireState, runningTests } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

const COMMAND = "completeFailover";

/**
 * Complete-VMFailover: failed-over-waiting-completion -> failed-over. The failed-over point's chain
 * becomes the VM's disks; every other point stops being a recovery point (the event lists them),
 * and the images of the points newer than it, in no kept chain, are released for storage to
 * delete. Older points' images stay: they are the chain's backing files. No retention runs any
 * more, and the failover can no longer be cancelled.
 *
 * Refused while any other point is locked by its policy (RecoveryPointLockedError), while a test failover runs (its chain may be among the released images) or a merge is
 * still being recorded (the kept chain would change under it).
 */
export interface CompleteFailoverInput {
  /** The time the locks are judged at (ISO); the wall clock when absent. */
  now?: string;
}

export function completeFailover(s: RelationshipState, input: CompleteFailoverInput = {}): RelationshipEvent[] {
  requireState(
    s,
    COMMAND,
    ["failed-over-waiting-completion"],
    s.state === "prepared-for-planned-failover"
      ? "A planned failover is only prepared: fail over first (or cancel the planned failover)."
      : s.state === "failed-over"
        ? `The failover of VM ${s.vmId} is already complete: start reverse replication to protect the VM again.`
        : s.state === "not-enabled"
          ? undefined
          : `VM ${s.vmId} is not failed over; there is nothing to complete.`,
  );
  const tests = runningTests(s).map((t) => t.testId);
  if (tests.length > 0) throw new TestFailoversRunningError(s.vmId, COMMAND, tests);
  const merging = s.points.find((p) => p.merging);
  if (merging) {
    const into = s.points[s.points.indexOf(merging) + 1]?.pointId ?? "?";
    throw new MergeInProgressError(s.vmId, merging.pointId, into, "completing the failover");
  }
  const pointId = s.failover?.pointId;
  const point = s.points.find((p) => p.pointId === pointId);
  // FailedOver always names a point that exists and is not merging: this is a corrupt history.
  if (!point) throw new Error(`VM ${s.vmId}: failed over to ${String(pointId)}, which the ledger does not hold`);
  const kept = chainDisks(s, point);
  const keptImages = new Set(kept.flatMap((d) => d.chain));
  const dropped = s.points.filter((p) => p !== point);
  // The policy's lock holds against every role: completing would drop the point for good.
  const nowMs = input.now === undefined ? Date.now() : Date.parse(input.now);
  const locked = dropped.filter((p) => isLocked(p, nowMs));
  if (locked.length > 0) {
    throw new RecoveryPointLockedError(
      s.vmId,
      "completing the failover",
      locked.map((p) => ({ pointId: p.pointId, lockedUntil: p.lockedUntil ?? "" })),
    );
  }
  return [
    relationshipEvent("FailoverCompleted", {
      pointId: point.pointId,
      droppedPointIds: dropped.map((p) => p.pointId),
      keptChains: kept.map((d) => ({ diskId: d.diskId, chain: d.chain })),
      releasedImages: dropped.flatMap((p) => p.disks.filter((d) => !keptImages.has(d.imagePath)).map((d) => ({ diskId: d.diskId, imagePath: d.imagePath }))),
    }),
  ];
}
