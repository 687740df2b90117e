import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireState } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

const COMMAND = "resume";

export function resume(s: RelationshipState): RelationshipEvent[] {
  requireState(s, COMMAND, ["paused"], s.state === "replicating" ? `VM ${s.vmId} is not paused; nothing to resume.` : undefined);
  return [relationshipEvent("ReplicationResumed", {})];
}
