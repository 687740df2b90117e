import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireCount, requireEnabled, requireGeneration, requireNextCycle, requireState, requireTime } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface StartInitialReplicationInput {
  /** The full cycle's sequence; its commit must carry the same one. */
  cycleSeq: number;
  cutoffAt: string;
  generation: number;
}

const COMMAND = "startInitialReplication";

/** Also the retry after a failed initial cycle, which returns the VM to ready-for-initial-replication. */
export function startInitialReplication(s: RelationshipState, input: StartInitialReplicationInput): RelationshipEvent[] {
  const cycleSeq = requireCount(COMMAND, "cycleSeq", input.cycleSeq, 1);
  const cutoffAt = requireTime(COMMAND, "cutoffAt", input.cutoffAt);
  const generation = requireCount(COMMAND, "generation", input.generation, 1);
  const allowed = ["ready-for-initial-replication"] as const;
  requireEnabled(s, COMMAND, allowed);
  requireGeneration(s, generation);
  requireState(s, COMMAND, allowed, s.state === "initial-replication-in-progress" ? "An initial replication is already running; wait for it to complete or fail." : undefined);
  requireNextCycle(s, cycleSeq);
  return [relationshipEvent("InitialReplicationStarted", { cycleSeq, cutoffAt })];
}
