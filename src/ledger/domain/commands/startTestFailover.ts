import { MergeInProgressError, TestFailoverExistsError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { chainDisks, requireOpenablePoint, requireState, requireText, requireTime } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import type { ReplicationStateName } from "../states.js";

export interface StartTestFailoverInput {
  /** Names this test in every later command; unique among the running tests of the VM. */
  testId: string;
  /** The point to test; the latest when absent. */
  pointId?: string;
  startedAt: string;
}

const COMMAND = "startTestFailover";

/** Wherever this site holds the chains as a replica with at least one point. */
const ALLOWED: readonly ReplicationStateName[] = ["replicating", "paused", "resync-required", "resynchronising"];

/**
 * Test failover (Start-VMFailover -AsTest): a test VM on a throwaway overlay on one point, on an
 * isolated network. It is an orthogonal flag, not a state: replication goes on and every other
 * command keeps working (invariant 4: the point's images are only ever read). Unlike Hyper-V,
 * several tests may run at once, each its own testId and overlay.
 *
 * Retention waits for the tests (startMerge refuses while any runs), and a test waits for a
 * merge already running: the merge rewrites the base every chain starts with, and deletes the
 * overlay of the point it merges into, so a test VM opened meanwhile could read neither safely.
 * The event records the chain the overlay is built on, which then stays untouched until the stop.
 */
export function startTestFailover(s: RelationshipState, input: StartTestFailoverInput): RelationshipEvent[] {
  const testId = requireText(COMMAND, "testId", input.testId);
  const pointId = input.pointId === undefined ? undefined : requireText(COMMAND, "pointId", input.pointId);
  const startedAt = requireTime(COMMAND, "startedAt", input.startedAt);
  requireState(s, COMMAND, ALLOWED, hintFor(s));
  const existing = Object.hasOwn(s.testFailovers, testId) ? s.testFailovers[testId] : undefined;
  if (existing) throw new TestFailoverExistsError(s.vmId, testId, existing.pointId);
  const point = requireOpenablePoint(s, pointId);
  const merging = s.points.find((p) => p.merging);
  if (merging) {
    const into = s.points[s.points.indexOf(merging) + 1]?.pointId ?? "?";
    throw new MergeInProgressError(s.vmId, merging.pointId, into, "starting a test failover (retry once it is done; merges take seconds to minutes)");
  }
  return [relationshipEvent("TestFailoverStarted", { testId, pointId: point.pointId, startedAt, disks: chainDisks(s, point) })];
}

function hintFor(s: RelationshipState): string | undefined {
  switch (s.state) {
    case "prepared-for-planned-failover":
      return "A planned failover is prepared: fail over and test the failed-over VM, or cancel the planned failover first.";
    case "failed-over-waiting-completion":
      return "The VM is failed over: check the failed-over VM itself, then complete or cancel the failover.";
    case "failed-over":
      return "The failover is complete and the recovery points are gone: start reverse replication, then test from the other site.";
    default:
      return undefined;
  }
}
