import { InvalidCommandInputError, RecoveryPointUnavailableError } from "../errors.js";
import { relationshipEvent, type DrillCheckName, type DrillCheckOutcome, type DrillResult, type DrillTrigger, type RelationshipEvent } from "../events.js";
import { requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface RecordVerificationDrillInput {
  drillId: string;
  /** The drill's test failover, still running; absent when its VM could not be launched. */
  testId?: string;
  pointId: string;
  trigger: DrillTrigger;
  result: DrillResult;
  failedCheck?: DrillCheckName;
  message?: string;
  timeToVerifiedMs?: number;
  checks: DrillCheckOutcome[];
  startedAt: string;
  finishedAt: string;
}

const COMMAND = "recordVerificationDrill";

/**
 * The outcome of a drill, recorded with its point. Only while the drill's test failover still
 * holds the point (so the point exists: a running test blocks the merges that would take it), and
 * a result is consistent: `verified` names no failed check, `failed` names the one that failed.
 */
export function recordVerificationDrill(s: RelationshipState, input: RecordVerificationDrillInput): RelationshipEvent[] {
  const drillId = requireText(COMMAND, "drillId", input.drillId);
  const testId = input.testId === undefined ? undefined : requireText(COMMAND, "testId", input.testId);
  const point = s.points.find((p) => p.pointId === input.pointId);
  if (!point)
    throw new RecoveryPointUnavailableError(
      s.vmId,
      input.pointId,
      "unknown",
      s.points.map((p) => p.pointId),
    );
  const test = testId === undefined ? undefined : s.testFailovers[testId];
  if (testId !== undefined && (!test || test.pointId !== point.pointId)) {
    throw new InvalidCommandInputError(
      `${COMMAND}: VM ${s.vmId} has no running test failover ${testId} on ${point.pointId}; a drill's result is recorded before its test is stopped`,
    );
  }
  if (input.result === "verified" && (input.failedCheck !== undefined || input.checks.some((c) => !c.passed))) {
    throw new InvalidCommandInputError(`${COMMAND}: a verified drill has no failed check`);
  }
  if (input.result === "failed" && input.failedCheck === undefined) throw new InvalidCommandInputError(`${COMMAND}: a failed drill names the check that failed`);
  return [
    relationshipEvent("VerificationDrillRecorded", {
      drillId,
      pointId: point.pointId,
      cycleSeq: point.cycleSeq,
      cutoffAt: point.cutoffAt,
      ...(testId !== undefined ? { testId } : {}),
      trigger: input.trigger,
      result: input.result,
      ...(input.failedCheck ? { failedCheck: input.failedCheck } : {}),
      ...(input.message ? { message: input.message } : {}),
      ...(input.timeToVerifiedMs !== undefined ? { timeToVerifiedMs: input.timeToVerifiedMs } : {}),
      checks: input.checks.map((c) => ({ ...c })),
      startedAt: input.startedAt,
      finishedAt: input.finishedAt,
    }),
  ];
}
