/** Runbooks: recovery plans as code (model, validation, planning, execution, rollback). */
export * from "./errors.js";
export * from "./model.js";
export { validateRunbook, loadRunbook, type LocatedProblem, type ValidationResult } from "./validate.js";
export { planRunbook, type Plan, type PlanStep, type PlannedFailover, type ResumeFrom } from "./planner.js";
export { executePlan, ledgerArgs, resumeOptions, type ExecuteOptions, type ProgressEvent, type RunOutcome } from "./executor.js";
export {
  ConsistencyGroupMemberListedError,
  expandConsistencyGroups,
  hasConsistencyGroups,
  type GroupPointResolver,
  type ResolvedGroupPoint,
} from "./consistencyGroups.js";
export { rollbackRun, type RollbackOutcome, type RollbackProgress } from "./rollback.js";
export {
  readRun,
  runStream,
  newRunId,
  launchedVms,
  EVENT as RUNBOOK_EVENT,
  RUNBOOK_STREAM_PREFIX,
  type RunRecord,
  type StepRecord,
  type RunStatus,
  type FailoverResult,
} from "./runLog.js";
export { localProbes, runHook, waitUntil } from "./checks.js";
export type { RunLogExpectedVersion, RunLogNewEvent, RunLogRecordedEvent, RunLogStore } from "./runLogStore.js";
export type { LaunchedVm, Probes, RunbookTarget, VmReplicaStatus } from "./target.js";
