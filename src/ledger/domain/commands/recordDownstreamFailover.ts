import { InvalidCommandInputError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireState, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface RecordDownstreamFailoverInput {
  /** The site this one forwards the VM's points to, which fails over now. */
  targetSiteId: string;
  /** This site's final point (cut after the primary stopped), forwarded as the failover's. */
  pointId: string;
  /** That point's id at the target site. */
  targetPointId: string;
  primaryStoppedAt: string;
  stopMethod: string;
  /** The operator at the target site who asked, as that site reported it ("" when it did not). */
  requestedBy: string;
  requestedByRole: string;
  recordedAt: string;
}

const COMMAND = "recordDownstreamFailover";

/**
 * Extended replication (A -> B -> C), on B: a planned failover at C went through this site and
 * succeeded here (A's agent stopped the VM, the final point reached C, C was told). The VM now
 * runs at C: A's agent is fenced (its Hello refused as stale, at any generation, so a restarted
 * A cannot replicate a second copy of the VM here) and replication waits for the reverse from C,
 * which PrimaryReplaced takes from this state. Only a replica holding the VM's points records it.
 */
export function recordDownstreamFailover(s: RelationshipState, input: RecordDownstreamFailoverInput): RelationshipEvent[] {
  const targetSiteId = requireText(COMMAND, "targetSiteId", input.targetSiteId);
  const pointId = requireText(COMMAND, "pointId", input.pointId);
  requireState(
    s,
    COMMAND,
    ["replicating", "paused", "resync-required", "resynchronising"],
    `VM ${s.vmId} is ${s.state} on this site: only a replica forwarding its points can relay a failover at the site it forwards them to.`,
  );
  if (s.downstreamFailover) {
    throw new InvalidCommandInputError(`${COMMAND}: VM ${s.vmId} already failed over at site ${s.downstreamFailover.targetSiteId} (recorded ${s.downstreamFailover.recordedAt})`);
  }
  if (targetSiteId === s.replicaSiteId || targetSiteId === s.primarySiteId) {
    throw new InvalidCommandInputError(`${COMMAND}: site ${targetSiteId} is this replica or the VM's primary, not a site this replica forwards to`);
  }
  if (!s.points.some((p) => p.pointId === pointId)) throw new InvalidCommandInputError(`${COMMAND}: VM ${s.vmId} has no point ${pointId} on this site`);
  if (!s.primaryIdentity) throw new InvalidCommandInputError(`${COMMAND}: VM ${s.vmId} has no primary identity to fence`);
  return [
    relationshipEvent("FailedOverDownstream", {
      targetSiteId,
      pointId,
      targetPointId: input.targetPointId,
      primaryStoppedAt: requireText(COMMAND, "primaryStoppedAt", input.primaryStoppedAt),
      stopMethod: input.stopMethod,
      primaryIdentity: s.primaryIdentity,
      generation: s.generation,
      requestedBy: input.requestedBy,
      requestedByRole: input.requestedByRole,
      recordedAt: requireText(COMMAND, "recordedAt", input.recordedAt),
    }),
  ];
}
