import { InvalidCommandInputError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireCount, requireEnabled, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import { REPLICATION_STATES } from "../states.js";

export interface RefuseStaleGenerationInput {
  presentedGeneration: number;
  /** Certificate subject CN of the peer that presented it. */
  peerIdentity: string;
}

const COMMAND = "refuseStaleGeneration";

/**
 * The audit record written after a StaleGenerationError was returned to a peer: an old primary
 * still trying to replicate is exactly what an operator must see after a failover.
 */
export function refuseStaleGeneration(s: RelationshipState, input: RefuseStaleGenerationInput): RelationshipEvent[] {
  const presentedGeneration = requireCount(COMMAND, "presentedGeneration", input.presentedGeneration);
  const peerIdentity = requireText(COMMAND, "peerIdentity", input.peerIdentity);
  requireEnabled(
    s,
    COMMAND,
    REPLICATION_STATES.filter((x) => x !== "not-enabled"),
  );
  // After a failover downstream the primary is stale at its own generation (the new one is the target site's).
  if (presentedGeneration === s.generation && s.downstreamFailover?.primaryIdentity !== peerIdentity) {
    throw new InvalidCommandInputError(`${COMMAND}: VM ${s.vmId} is at generation ${s.generation}, the one ${peerIdentity} presented; nothing was stale`);
  }
  return [relationshipEvent("StaleGenerationRefused", { presentedGeneration, currentGeneration: s.generation, peerIdentity })];
}
