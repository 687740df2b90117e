import { InvalidCommandInputError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireState, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import { completeFailover } from "./completeFailover.js";

export interface StartReverseReplicationInput {
  /** This site, where the VM now runs: the relationship's replica site until now. */
  newPrimarySiteId: string;
  /** Certificate subject CN of this site's agent, which now captures the VM. */
  newPrimaryIdentity: string;
}

const COMMAND = "startReverseReplication";

/**
 * Reverse replication (Set-VMReplication -Reverse), on the site where the VM was failed over:
 * from failed-over, or straight from failed-over-waiting-completion after a *planned* failover
 * (as Hyper-V allows: nothing is left to check, so the completion is decided here too and both
 * events are appended at once). After an unplanned failover, complete it first: completing is the
 * operator's word that the failed-over VM is good, since a cancel is impossible afterwards.
 *
 * This relationship then records this site as the primary (`newPrimaryIdentity` its agent) and
 * the old primary as the replica, at the failover's generation, in ready-for-initial-replication:
 * the old primary's agent is refused (another identity, and a stale generation) on this stream.
 *
 * The other site's ledger, which receives the reverse direction, holds it as a new relationship
 * in its own `replication-<vmId>` stream: `enableReplication({ primarySiteId: <this site>,
 * replicaSiteId: <the old primary>, primaryIdentity: <newPrimaryIdentity>, disks, vmSpec,
 * retention, generation: <this event's generation> })`. Its data plane then accepts this site's
 * agent's Hello presenting that generation and refuses anything older, so the old primary's
 * leftover agent can never write there either; the first cycle is the initial replication (a
 * resynchronisation by comparison against the old disks is the efficient form of it). With a
 * ledger shared by both sites, this very stream is that relationship: nothing else is appended.
 */
export function startReverseReplication(s: RelationshipState, input: StartReverseReplicationInput): RelationshipEvent[] {
  const newPrimarySiteId = requireText(COMMAND, "newPrimarySiteId", input.newPrimarySiteId);
  const newPrimaryIdentity = requireText(COMMAND, "newPrimaryIdentity", input.newPrimaryIdentity);
  const plannedWaiting = s.state === "failed-over-waiting-completion" && s.failover?.kind === "planned";
  if (!plannedWaiting) {
    requireState(
      s,
      COMMAND,
      ["failed-over"],
      s.state === "failed-over-waiting-completion"
        ? "After an unplanned failover, check the failed-over VM and complete the failover first (it can no longer be cancelled afterwards)."
        : s.state === "prepared-for-planned-failover"
          ? "A planned failover is only prepared: fail over first."
          : s.state === "not-enabled"
            ? undefined
            : `VM ${s.vmId} is not failed over: reverse replication starts from the site the VM was failed over to.`,
    );
  }
  if (newPrimarySiteId !== s.replicaSiteId) {
    throw new InvalidCommandInputError(`${COMMAND}: VM ${s.vmId} was failed over to site ${s.replicaSiteId}, which becomes the primary, not ${newPrimarySiteId}`);
  }
  if (newPrimaryIdentity === s.primaryIdentity) {
    throw new InvalidCommandInputError(`${COMMAND}: ${newPrimaryIdentity} is the old primary's agent; the new primary identity is the agent of site ${newPrimarySiteId}`);
  }
  const reverse = relationshipEvent("ReverseReplicationStarted", {
    newPrimarySiteId,
    newPrimaryIdentity,
    newReplicaSiteId: s.primarySiteId ?? "",
    generation: s.generation,
  });
  return plannedWaiting ? [...completeFailover(s), reverse] : [reverse];
}
