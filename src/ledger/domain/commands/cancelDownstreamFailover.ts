import { InvalidCommandInputError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireState, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface CancelDownstreamFailoverInput {
  /** The site the VM failed over at (FailedOverDownstream's), as the caller names it. */
  targetSiteId: string;
  /**
   * Who said the failover there was cancelled: "target" (that site told this one over the stream
   * this site forwards on) or "operator" (an operator here, once the failover there was cancelled).
   */
  toldBy: "target" | "operator";
  /** The operator who cancelled at the target, as it reported it ("" when told by an operator here). */
  cancelledBy: string;
  /** The target's generation after its cancel (0 when not known: told by an operator here). */
  targetGeneration: number;
  recordedAt: string;
}

const COMMAND = "cancelDownstreamFailover";

/**
 * Extended replication (A -> B -> C), on B: the planned failover at C that went through this site
 * (FailedOverDownstream) was cancelled at C, so the VM runs at A again, or will once its operator
 * starts it: the fence on A's agent is lifted and replication goes on from where it stopped (the
 * final point is the newest here; A's agent presents the generation it had, which is this
 * relationship's). The state returns to replicating: a planned failover went through only while
 * the primary's agent was shipping cycles here. Nothing else changes: the points are kept.
 *
 * Only for the site the failover happened at. An operator lifting it here must be sure that the
 * failover at that site was cancelled (the command says so): two sites would run the VM otherwise.
 */
export function cancelDownstreamFailover(s: RelationshipState, input: CancelDownstreamFailoverInput): RelationshipEvent[] {
  const targetSiteId = requireText(COMMAND, "targetSiteId", input.targetSiteId);
  const d = s.downstreamFailover;
  if (!d) {
    throw new InvalidCommandInputError(`${COMMAND}: VM ${s.vmId} did not fail over at a site this one forwards to (no FailedOverDownstream is in force here): nothing to lift`);
  }
  requireState(s, COMMAND, ["paused"], `VM ${s.vmId} is ${s.state} here, not paused by the failover at ${d.targetSiteId}`);
  if (targetSiteId !== d.targetSiteId) {
    throw new InvalidCommandInputError(`${COMMAND}: VM ${s.vmId} failed over at site ${d.targetSiteId}, not at ${targetSiteId}: only that site's cancel lifts the fence`);
  }
  return [
    relationshipEvent("DownstreamFailoverCancelled", {
      targetSiteId,
      pointId: d.pointId,
      primaryIdentity: d.primaryIdentity,
      toldBy: input.toldBy,
      cancelledBy: input.cancelledBy,
      targetGeneration: input.targetGeneration,
      recordedAt: requireText(COMMAND, "recordedAt", input.recordedAt),
    }),
  ];
}
