import { InvalidCommandInputError, PlannedFailoverNotReadyError, RecoveryPointUnavailableError, UnexpectedGenerationError } from "../errors.js";
import { relationshipEvent, type FailoverKind, type RelationshipEvent } from "../events.js";
import { requireCount, requireOpenablePoint, requireState, requireText } from "../guards.js";
import type { RecoveryPoint, RelationshipState } from "../relationship.js";
import type { ReplicationStateName } from "../states.js";

export interface FailoverInput {
  kind: FailoverKind;
  /**
   * Unplanned only: any retained point that is not being merged away (the latest by default).
   * A planned failover always uses the latest point; naming another one is refused.
   */
  pointId?: string;
  /**
   * The generation the caller expects this failover to create (the current + 1). Optional; when
   * given and the relationship has moved on meanwhile, the failover is refused rather than
   * creating a generation the operator did not decide on.
   */
  newGeneration?: number;
  /** The site launches the VM from the point; after a site restart it launches it again if it is not running. */
  startVm?: boolean;
}

const COMMAND = "failover";

const UNPLANNED_FROM: readonly ReplicationStateName[] = [
  "replicating",
  "paused",
  "resync-required",
  // Our resync keeps the points (they were right at their cut-offs); the in-flight resync cycle
  // is abandoned and its partial overlay discarded. A disaster during a resync must be recoverable.
  "resynchronising",
  "prepared-for-planned-failover",
];

/**
 * Failover (Start-VMFailover): the replica site becomes where the VM runs, from an overlay on the
 * chosen point. The generation goes up by exactly 1 and the event carries the new one; from then
 * on everything the old primary sends in its generation is refused as stale (StaleGenerationError
 * in commitCycle, failCycle, startInitialReplication, startResync), which is what keeps two sites
 * from accepting writes in the same generation (invariant 3), without probing the old primary.
 *
 * - planned: from prepared-for-planned-failover only, on the latest point, and only once that
 *   point holds the primary's final cycle (cut at or after the primary stopped): zero data loss.
 * - unplanned: from replicating, paused, resync-required, resynchronising or a prepared planned
 *   failover (giving up on the final cycle), on any openable point.
 *
 * Running test failovers are allowed and keep running, each on its own throwaway overlay: the
 * failover VM gets one more overlay, and nothing rewrites the chain (retention stops in the
 * failed-over states). They must be stopped before the failover is completed, since completing
 * deletes images they may read.
 *
 * A merge already running is not waited for here (a disaster must not queue behind retention);
 * its point cannot be chosen, and the site launches the VM once completeMerge is recorded (it is
 * accepted in every state), reading the chain from the ledger at that moment.
 */
export function failover(s: RelationshipState, input: FailoverInput): RelationshipEvent[] {
  const kind = input.kind;
  if (kind !== "planned" && kind !== "unplanned") {
    throw new InvalidCommandInputError(`${COMMAND}: kind must be "planned" or "unplanned", got ${String(kind)}`);
  }
  const pointId = input.pointId === undefined ? undefined : requireText(COMMAND, "pointId", input.pointId);
  const stated = input.newGeneration === undefined ? undefined : requireCount(COMMAND, "newGeneration", input.newGeneration, 2);
  const command = `${COMMAND}(${kind})`;

  let point: RecoveryPoint;
  if (kind === "planned") {
    requireState(
      s,
      command,
      ["prepared-for-planned-failover"],
      s.state === "replicating" ? "Prepare the planned failover first (shut the primary VM down, then prepareFailover), or fail over unplanned." : undefined,
    );
    const latest = s.points.at(-1);
    if (!latest) throw new RecoveryPointUnavailableError(s.vmId, pointId, "none", []);
    if (pointId !== undefined && pointId !== latest.pointId) {
      throw new InvalidCommandInputError(
        `${COMMAND}: a planned failover of VM ${s.vmId} uses the latest point ${latest.pointId} (no data loss); ` +
          `to fail over to ${pointId}, cancel the planned failover and fail over unplanned`,
      );
    }
    const stoppedAt = s.failover?.primaryStoppedAt;
    if (stoppedAt !== undefined && latest.cutoffAt < stoppedAt) {
      throw new PlannedFailoverNotReadyError(s.vmId, latest.pointId, latest.cutoffAt, stoppedAt);
    }
    point = latest;
  } else {
    requireState(s, command, UNPLANNED_FROM);
    point = requireOpenablePoint(s, pointId);
  }

  const generation = s.generation + 1;
  if (stated !== undefined && stated !== generation) throw new UnexpectedGenerationError(s.vmId, generation, stated);
  return [
    relationshipEvent("FailedOver", {
      pointId: point.pointId,
      generation,
      kind,
      cutoffAt: point.cutoffAt,
      primaryGeneration: s.generationHandover?.fromGeneration ?? s.generation,
      ...(input.startVm === undefined ? {} : { startVm: input.startVm }),
    }),
  ];
}
