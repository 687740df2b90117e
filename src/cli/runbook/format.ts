import { formatTable } from "../table.js";
import type { FailoverResult, Plan, ProgressEvent, RollbackProgress, RunRecord, StepRecord } from "../../runbook/index.js";

/** Human text for people at a terminal; `--json` prints the same facts as JSON instead. */

const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const stamp = (ms: number) => `[${(ms / 1000).toFixed(1).padStart(7)}s]`;

export function formatPlan(plan: Plan): string {
  const mode = plan.test ? "drill: every VM as a test failover on an isolated network; nothing in production is touched" : "real failover";
  const rows = plan.steps.map((s, i) => [i + 1, s.id, s.skip ? `(skip: ${s.skip}) ${s.description}` : s.description]);
  return `runbook '${plan.runbook}' (${mode}), ${plan.steps.length} steps:\n` + formatTable(["#", "step", "action"], rows);
}

export function formatProgress(e: ProgressEvent, idWidth: number): string {
  switch (e.type) {
    case "run-started":
      return `${e.resumed ? "resuming" : "starting"} run ${e.runId} of runbook '${e.runbook}'${e.test ? " (drill: test failovers only)" : ""}: ${e.steps} steps, recorded in ledger stream ${e.stream}`;
    case "step-started":
      return `${stamp(e.elapsedMs)} start   ${e.stepId.padEnd(idWidth)}  ${e.description}`;
    case "step-finished": {
      const word = e.status === "succeeded" ? "ok     " : e.status === "skipped" ? "skipped" : "FAILED ";
      return `${stamp(e.elapsedMs)} ${word} ${e.stepId.padEnd(idWidth)}  ${e.status === "skipped" ? "" : `(${secs(e.durationMs)}) `}${e.detail}`;
    }
    case "run-finished":
      return e.status === "succeeded"
        ? `run ${e.runId} succeeded in ${secs(e.elapsedMs)}; measured RTO ${secs(e.rtoMs ?? 0)}\nnext:\n${e.next.map((n) => `  ${n}`).join("\n")}`
        : `${e.error}\nnext:\n${e.next.map((n) => `  ${n}`).join("\n")}`;
  }
}

export function formatRollbackProgress(e: RollbackProgress): string {
  switch (e.type) {
    case "rollback-started":
      return e.steps.length
        ? `rolling back run ${e.runId}${e.test ? " (drill)" : ""}: ${e.steps.length} failover step(s) to undo, newest first`
        : `run ${e.runId}: no failover to undo`;
    case "undo-finished":
      return `${stamp(e.elapsedMs)} ${e.status.padEnd(15)} ${e.stepId}  ${e.action}: ${e.detail}`;
    case "rollback-finished":
      return e.ok ? `run ${e.runId} rolled back` : `run ${e.runId}: rollback incomplete; fix the failures above and run the rollback again (undone steps are not repeated)`;
  }
}

function detailOf(s: StepRecord): string {
  if (s.undo) return `${s.undo.status === "undone" ? "undone" : s.undo.status === "failed" ? "UNDO FAILED" : "nothing to undo"}: ${s.undo.detail}`;
  if (s.status === "failed") return s.error ?? "";
  const r = s.result as (Partial<FailoverResult> & { waitedMs?: number; confirmedBy?: string; exitCode?: number }) | undefined;
  if (!r) return "";
  if (s.kind === "failover")
    return [`point ${r.pointId}`, r.testId && `test ${r.testId}`, r.generation !== undefined && `generation ${r.generation}`, r.launched && `serial log ${r.launched.serialLog}`]
      .filter(Boolean)
      .join(", ");
  if (r.waitedMs !== undefined) return `satisfied after ${secs(r.waitedMs)}`;
  if (r.confirmedBy) return `confirmed by ${r.confirmedBy}`;
  if (r.exitCode !== undefined) return `exit code ${r.exitCode}`;
  return "";
}

export function formatRun(run: RunRecord): string {
  const head = [
    `run ${run.runId} of runbook '${run.runbook}' (${run.file})${run.test ? ", a drill (test failovers only)" : ""}`,
    `started ${run.startedAt}${run.resumes ? `, resumed ${run.resumes} time(s)` : ""}; status: ${run.status}${run.stopped ? (run.status === "stopped" ? ` at ${run.stopped.stepId}` : `; it had stopped at ${run.stopped.stepId}`) : ""}`,
    ...(run.rtoMs !== undefined ? [`measured RTO: ${secs(run.rtoMs)} (run start to the last VM running or wait satisfied)`] : []),
  ];
  const rows = run.steps.map((s) => [s.id, s.status, s.attempts, s.durationMs === undefined ? "-" : secs(s.durationMs), detailOf(s)]);
  return `${head.join("\n")}\n${formatTable(["step", "status", "attempts", "duration", "detail"], rows)}`;
}
