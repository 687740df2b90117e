import { canonicalJson } from "../../hashChain.js";
import type { JsonObject } from "../events.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { InvalidCommandInputError } from "../errors.js";
import { requireEnabled } from "../guards.js";
import { REPLICATION_STATES } from "../states.js";
import type { RelationshipState } from "../relationship.js";

const COMMAND = "updateVmSpec";

/**
 * Records the primary's launch description when it differs from the last one recorded, so the
 * ledger holds the spec's history; the same spec again records nothing.
 */
export function updateVmSpec(s: RelationshipState, input: { vmSpec: JsonObject }): RelationshipEvent[] {
  if (typeof input.vmSpec !== "object" || input.vmSpec === null || Array.isArray(input.vmSpec)) {
    throw new InvalidCommandInputError(`${COMMAND}: vmSpec must be a JSON object`);
  }
  requireEnabled(
    s,
    COMMAND,
    REPLICATION_STATES.filter((x) => x !== "not-enabled"),
  );
  if (canonicalJson(s.vmSpec) === canonicalJson(input.vmSpec)) return [];
  return [relationshipEvent("VmSpecChanged", { vmSpec: input.vmSpec })];
}
