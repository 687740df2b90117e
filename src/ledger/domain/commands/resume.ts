import { InvalidCommandInputError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireState } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

const COMMAND = "resume";

export function resume(s: RelationshipState): RelationshipEvent[] {
  requireState(s, COMMAND, ["paused"], s.state === "replicating" ? `VM ${s.vmId} is not paused; nothing to resume.` : undefined);
  // Resuming would take the fenced primary back while the VM runs at the other site: two VMs.
  if (s.downstreamFailover) throw new InvalidCommandInputError(`${COMMAND}: ${s.downstreamFailover.reason}`);
  return [relationshipEvent("ReplicationResumed", {})];
}
