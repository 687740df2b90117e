import { InvalidCommandInputError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireEnabled, requireRunningTest, requireText, requireTime } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import { REPLICATION_STATES } from "../states.js";

export interface StopTestFailoverInput {
  testId: string;
  /** Recorded once the test VM is stopped and its overlay deleted: merges may then rewrite the chain. */
  stoppedAt: string;
}

const COMMAND = "stopTestFailover";

/** Any enabled state: a test outlives a failover, and must always be stoppable. */
export function stopTestFailover(s: RelationshipState, input: StopTestFailoverInput): RelationshipEvent[] {
  const testId = requireText(COMMAND, "testId", input.testId);
  const stoppedAt = requireTime(COMMAND, "stoppedAt", input.stoppedAt);
  requireEnabled(
    s,
    COMMAND,
    REPLICATION_STATES.filter((x) => x !== "not-enabled"),
  );
  const test = requireRunningTest(s, testId);
  const durationMs = Date.parse(stoppedAt) - Date.parse(test.startedAt);
  if (durationMs < 0) {
    throw new InvalidCommandInputError(`${COMMAND}: test failover ${testId} started at ${test.startedAt}, after ${stoppedAt}`);
  }
  return [relationshipEvent("TestFailoverStopped", { testId, stoppedAt, durationMs })];
}
