import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireCount, requireEnabled, requireGeneration, requireState, requireText, requireTime } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import type { ReplicationStateName } from "../states.js";

export interface RecordCycleSkippedInput {
  generation: number;
  /** What stopped the cycle on the primary, a literal error code such as SCRATCH_SPACE_LOW. */
  code: string;
  /** For the operator: what is wrong and what to do. */
  message: string;
  /** When the primary skipped the cycle (its clock). */
  skippedAt: string;
}

const COMMAND = "recordCycleSkipped";

/** Where a cycle can be due on the primary, so where its not starting means something. */
const ALLOWED: readonly ReplicationStateName[] = ["ready-for-initial-replication", "initial-replication-in-progress", "replicating", "resync-required", "resynchronising"];

/**
 * The primary did not start a due cycle (e.g. its scratch filesystem is nearly full), so no point
 * arrives although nothing failed on this side. Recorded once per code while the condition lasts:
 * an agent repeats the report every interval (about 3,000 a day at 30 s), and the ledger must not
 * grow with how long the condition lasts. The next committed cycle ends it (see `evolve`).
 */
export function recordCycleSkipped(s: RelationshipState, input: RecordCycleSkippedInput): RelationshipEvent[] {
  const generation = requireCount(COMMAND, "generation", input.generation, 1);
  const code = requireText(COMMAND, "code", input.code);
  const message = requireText(COMMAND, "message", input.message).slice(0, 2000);
  const skippedAt = requireTime(COMMAND, "skippedAt", input.skippedAt);
  requireEnabled(s, COMMAND, ALLOWED);
  requireGeneration(s, generation);
  requireState(s, COMMAND, ALLOWED);
  if (s.cycleSkipped?.code === code) return [];
  return [relationshipEvent("CycleSkipped", { generation, code, message, skippedAt })];
}
