import { InvalidCommandInputError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireCount, requireEnabled, requireRunningTest, requireText, requireTime } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import { REPLICATION_STATES } from "../states.js";

export interface RecordTestFailoverRunningInput {
  testId: string;
  runningAt: string;
  /** Measured by the site (monotonic clock) from the start to the test VM running: the test's RTO. */
  timeToRunningMs: number;
}

const COMMAND = "recordTestFailoverRunning";

/**
 * Reported by the site once the test VM runs, so the measured time to running is in the ledger.
 * A test keeps running whatever happens to the relationship (a failover included), so any enabled
 * state is fine. Reported twice (a retry after a crash), the first report stands: no events.
 */
export function recordTestFailoverRunning(s: RelationshipState, input: RecordTestFailoverRunningInput): RelationshipEvent[] {
  const testId = requireText(COMMAND, "testId", input.testId);
  const runningAt = requireTime(COMMAND, "runningAt", input.runningAt);
  const timeToRunningMs = requireCount(COMMAND, "timeToRunningMs", input.timeToRunningMs);
  requireEnabled(
    s,
    COMMAND,
    REPLICATION_STATES.filter((x) => x !== "not-enabled"),
  );
  const test = requireRunningTest(s, testId);
  if (test.runningAt !== undefined) return [];
  if (runningAt < test.startedAt) {
    throw new InvalidCommandInputError(`${COMMAND}: test failover ${testId} started at ${test.startedAt}, after ${runningAt}`);
  }
  return [relationshipEvent("TestFailoverRunning", { testId, runningAt, timeToRunningMs })];
}
