import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireState, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface MarkResyncRequiredInput {
  /** Why change tracking can no longer be trusted, e.g. "BITMAP_INCONSISTENT". */
  reason: string;
}

const COMMAND = "markResyncRequired";

/**
 * Reported by machinery (agent, site) rather than chosen by an operator, and several detectors
 * may report the same loss: a VM already resync-required is left as is (no events).
 */
export function markResyncRequired(s: RelationshipState, input: MarkResyncRequiredInput): RelationshipEvent[] {
  const reason = requireText(COMMAND, "reason", input.reason);
  if (s.state === "resync-required") return [];
  requireState(
    s,
    COMMAND,
    ["replicating", "paused", "resynchronising"],
    s.state === "initial-replication-in-progress" ? "An initial replication needs no resync: fail the initial cycle and start the initial replication again." : undefined,
  );
  return [relationshipEvent("ResyncRequired", { reason })];
}
