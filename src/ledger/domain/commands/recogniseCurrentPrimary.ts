import { StaleGenerationError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireCount, requireEnabled, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import { REPLICATION_STATES, type ReplicationStateName } from "../states.js";

export interface RecogniseCurrentPrimaryInput {
  /** The generation the peer's Hello presented (0 from an agent that lost its state). */
  presentedGeneration: number;
  /** Certificate subject CN of the peer. */
  peerIdentity: string;
}

const COMMAND = "recogniseCurrentPrimary";

/** While a failover is prepared, under way or done, the replica (or a VM launched from it) decides. */
const FAILED_OVER: readonly ReplicationStateName[] = ["failed-over-waiting-completion", "failed-over"];

/**
 * An agent that lost its state directory presents generation 0 (or an older one it was
 * configured with). Only a failover makes a primary stale: when the peer is the relationship's
 * own primary identity and no failover is in progress or done, nothing moved the primary, so it
 * is told the current generation (GenerationAcknowledged, for the audit trail) instead of being
 * refused, which would make it pause its healthy VM. A failover that was cancelled returned the
 * relationship to this primary, so its older generations are recognised too.
 *
 * Refused (StaleGenerationError) for another identity, a generation above the current one (a
 * failover upstream is recogniseUpstreamFailover's, and needs its own declaration), a generation
 * below the last failover upstream's, after a failover downstream (FailedOverDownstream), and whenever
 * the relationship is failed over: only then is a VM fenced.
 */
export function recogniseCurrentPrimary(s: RelationshipState, input: RecogniseCurrentPrimaryInput): RelationshipEvent[] {
  const presentedGeneration = requireCount(COMMAND, "presentedGeneration", input.presentedGeneration);
  const peerIdentity = requireText(COMMAND, "peerIdentity", input.peerIdentity);
  requireEnabled(
    s,
    COMMAND,
    REPLICATION_STATES.filter((x) => x !== "not-enabled"),
  );
  if (presentedGeneration === s.generation) return [];
  // A failover upstream fenced every generation below its own: the primary site's forwarder that
  // still presents one is the old primary, not an agent that lost its state.
  const fencedUpstream = s.upstreamFailover !== undefined && presentedGeneration < s.upstreamFailover.generation;
  if (
    peerIdentity !== s.primaryIdentity ||
    presentedGeneration > s.generation ||
    FAILED_OVER.includes(s.state) ||
    s.failover?.pointId !== undefined ||
    fencedUpstream ||
    s.downstreamFailover !== undefined
  ) {
    throw new StaleGenerationError(s.vmId, presentedGeneration, s.generation);
  }
  return [relationshipEvent("GenerationAcknowledged", { peerIdentity, presentedGeneration, generation: s.generation })];
}
