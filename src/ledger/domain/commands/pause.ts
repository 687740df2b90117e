import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireState, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface PauseInput {
  reason: string;
}

const COMMAND = "pause";

/**
 * An operator command, so pausing a paused VM is refused rather than ignored: the operator
 * learns that someone else acted first. Cycles arriving while paused are refused and failed by
 * the agent, so no changed block is lost.
 */
export function pause(s: RelationshipState, input: PauseInput): RelationshipEvent[] {
  const reason = requireText(COMMAND, "reason", input.reason);
  requireState(s, COMMAND, ["replicating"], s.state === "paused" ? `VM ${s.vmId} is already paused (${s.pauseReason}).` : undefined);
  return [relationshipEvent("ReplicationPaused", { reason })];
}
