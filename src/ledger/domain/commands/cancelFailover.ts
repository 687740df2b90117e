import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireState } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

const COMMAND = "cancelFailover";

/**
 * Cancel (Stop-VMFailover), from prepared-for-planned-failover or failed-over-waiting-completion,
 * back to the state the failover started from (replicating, paused or resync-required; a resync
 * abandoned by the failover must run again). Nothing on the replica is lost: every point is kept.
 * Record it only once the failover VM is stopped and its overlay discarded (what it wrote is
 * thrown away, as Hyper-V does): from then on, the old primary is the only place the VM runs.
 *
 * The generation is not lowered (a generation number is never reused). Resuming the old primary:
 * its agent still holds the generation from before the failover and would be refused as stale.
 * The cancel therefore opens a generation handover (`FailoverCancelled.primaryGeneration` <
 * `generation`): the data plane passes a Hello presenting another generation to
 * acknowledgeGeneration, which accepts it only from the relationship's primary identity and only
 * for a generation from `primaryGeneration` up to the current one, records GenerationAcknowledged,
 * and the site answers HelloAck with the current generation, which the agent adopts for every
 * later message. The handover closes as soon as a cycle is committed in the current generation
 * (proof the agent adopted it), and at any new failover. No operator action is needed.
 *
 * Invariant 3 still holds: during the failover nothing was accepted from the old primary, after
 * the cancel only the old primary writes, and the handover never reopens an older generation for
 * anyone else (another identity, or any generation once the primary has adopted the current one).
 * Cancelling a prepared planned failover changes no generation, so it opens no handover.
 */
export function cancelFailover(s: RelationshipState): RelationshipEvent[] {
  requireState(
    s,
    COMMAND,
    ["prepared-for-planned-failover", "failed-over-waiting-completion"],
    s.state === "failed-over"
      ? "The failover is complete and the other recovery points are gone, so it cannot be cancelled: start reverse replication, then fail back with a planned failover."
      : s.state === "not-enabled"
        ? undefined
        : `No failover of VM ${s.vmId} is prepared or in progress; nothing to cancel.`,
  );
  const returnedTo = s.failover?.previousState ?? "replicating";
  const primaryGeneration = s.failover?.primaryGeneration ?? s.generationHandover?.fromGeneration ?? s.generation;
  return [relationshipEvent("FailoverCancelled", { returnedTo, generation: s.generation, primaryGeneration })];
}
