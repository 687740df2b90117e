import { StaleGenerationError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireCount, requireEnabled, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import { REPLICATION_STATES } from "../states.js";

export interface AcknowledgeGenerationInput {
  /** The generation the peer's Hello presented. */
  presentedGeneration: number;
  /** Certificate subject CN of the peer. */
  peerIdentity: string;
}

const COMMAND = "acknowledgeGeneration";

/**
 * How the old primary resumes after a cancelled failover (see cancelFailover). The data plane
 * calls it for a Hello presenting a generation other than the current one, before refusing:
 *
 * - the current generation: nothing to acknowledge, no events (calling it for every Hello is fine);
 * - inside the generation handover that a cancel opened (the relationship's primary identity,
 *   a generation from the handover's `fromGeneration` up to the current one): GenerationAcknowledged,
 *   and the site answers HelloAck with `generation`, the current one, which the agent must present
 *   from then on. Recorded on every such Hello (an agent that lost the HelloAck asks again), until
 *   a cycle committed in the current generation closes the handover;
 * - anything else: StaleGenerationError, exactly as without this command, and the caller records
 *   refuseStaleGeneration. In particular an old primary after a failover that was not cancelled,
 *   any other identity, and any generation once the primary has adopted the current one.
 *
 * Cycles themselves are never accepted in an older generation: only the Hello is, so that the
 * agent learns the generation it must use.
 */
export function acknowledgeGeneration(s: RelationshipState, input: AcknowledgeGenerationInput): RelationshipEvent[] {
  const presentedGeneration = requireCount(COMMAND, "presentedGeneration", input.presentedGeneration);
  const peerIdentity = requireText(COMMAND, "peerIdentity", input.peerIdentity);
  requireEnabled(
    s,
    COMMAND,
    REPLICATION_STATES.filter((x) => x !== "not-enabled"),
  );
  if (presentedGeneration === s.generation) return [];
  const h = s.generationHandover;
  if (!h || h.peerIdentity !== peerIdentity || presentedGeneration < h.fromGeneration || presentedGeneration > s.generation) {
    throw new StaleGenerationError(s.vmId, presentedGeneration, s.generation);
  }
  return [relationshipEvent("GenerationAcknowledged", { peerIdentity, presentedGeneration, generation: s.generation })];
}
