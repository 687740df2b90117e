import { OutOfOrderCycleError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireCount, requireEnabled, requireGeneration, requireNextCycle, requireState, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import type { ReplicationStateName } from "../states.js";

export interface FailCycleInput {
  cycleSeq: number;
  generation: number;
  /** A stable code (e.g. a QreplicaError's `code`), for statistics and health rules. */
  reason: string;
  message: string;
}

const COMMAND = "failCycle";

/**
 * A failure is a fact to record wherever a cycle can have been in flight, including after a
 * pause or a resync-required raced with it. A failed initial or resync cycle sends the VM back
 * to the state from which it can be started again.
 */
const ALLOWED: readonly ReplicationStateName[] = [
  "initial-replication-in-progress",
  "replicating",
  "paused",
  "resync-required",
  "resynchronising",
  "prepared-for-planned-failover",
];

export function failCycle(s: RelationshipState, input: FailCycleInput): RelationshipEvent[] {
  const cycleSeq = requireCount(COMMAND, "cycleSeq", input.cycleSeq, 1);
  const generation = requireCount(COMMAND, "generation", input.generation, 1);
  const reason = requireText(COMMAND, "reason", input.reason);
  const message = typeof input.message === "string" ? input.message : String(input.message);
  requireEnabled(s, COMMAND, ALLOWED);
  requireGeneration(s, generation);
  requireState(s, COMMAND, ALLOWED);
  if (s.inFlight && cycleSeq === s.inFlight.cycleSeq) {
    // The started full/resync cycle: its seq was reserved, so it is not "after" lastCycleSeq yet.
  } else if (s.state === "initial-replication-in-progress" || s.state === "resynchronising") {
    throw new OutOfOrderCycleError(s.vmId, cycleSeq, s.lastCycleSeq, s.inFlight?.cycleSeq);
  } else {
    requireNextCycle(s, cycleSeq);
  }
  return [relationshipEvent("CycleFailed", { cycleSeq, generation, reason, message })];
}
