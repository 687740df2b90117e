import { MergeBlockedByTestFailoverError, MergeInProgressError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireState } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import type { ReplicationStateName } from "../states.js";

const COMMAND = "startMerge";

/** Retention only runs while this site holds the chains as a replica; a failover owns them. */
const ALLOWED: readonly ReplicationStateName[] = ["replicating", "paused", "resync-required", "resynchronising"];

/**
 * Retention: when more points than `retention.maxPoints` exist, the oldest is merged into the
 * next one, which becomes the base. Returns no events when nothing is over retention, so a
 * scheduler may call it freely.
 *
 * A running test failover blocks every merge beneath its point, not just merges of its own
 * point or the one it merges into: `qemu-img commit` rewrites the base image that the test VM
 * holds open through its backing chain.
 * Since the merge always takes the oldest point, that is every point a test can run on.
 */
export function startMerge(s: RelationshipState): RelationshipEvent[] {
  requireState(s, COMMAND, ALLOWED);
  const merging = s.points.find((p) => p.merging);
  if (merging) {
    throw new MergeInProgressError(s.vmId, merging.pointId, s.points[s.points.indexOf(merging) + 1]?.pointId ?? "?");
  }
  if (s.points.length <= s.retention.maxPoints) return [];
  const [oldest, into] = s.points;
  if (!oldest || !into) return [];
  // Every test's chain starts at the base that the merge rewrites, so every running test blocks.
  const blocking = Object.keys(s.testFailovers).sort();
  if (blocking.length > 0) throw new MergeBlockedByTestFailoverError(s.vmId, oldest.pointId, into.pointId, blocking);
  return [relationshipEvent("RecoveryPointMergeStarted", { pointId: oldest.pointId, intoPointId: into.pointId })];
}
