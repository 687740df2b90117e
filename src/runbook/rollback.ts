import { RunbookRunNotFoundError } from "./errors.js";
import { EVENT, RunRecorder, readRun, type FailoverResult, type StepRecord, type UndoStatus } from "./runLog.js";
import type { RunLogStore } from "./runLogStore.js";
import type { RunbookTarget } from "./target.js";

export type RollbackProgress =
  | { type: "rollback-started"; runId: string; steps: string[]; test: boolean }
  | { type: "undo-finished"; runId: string; stepId: string; action: string; status: UndoStatus; detail: string; elapsedMs: number }
  | { type: "rollback-finished"; runId: string; ok: boolean; elapsedMs: number };

export interface RollbackOutcome {
  runId: string;
  ok: boolean;
  undone: string[];
  failed: Array<{ stepId: string; error: string }>;
  /** An earlier rollback had already undone everything: nothing was called or recorded. */
  alreadyClean: boolean;
}

/**
 * Undoes what a run did, newest first: stops the test failovers it started, cancels the failovers
 * it made. Waits, confirmations and hooks changed nothing on the site and are left alone. Every
 * undo is recorded, so a rollback that failed halfway can simply be run again.
 */
export async function rollbackRun(opts: {
  store: RunLogStore;
  target: RunbookTarget;
  runId: string;
  ledgerPath: string;
  onProgress?: (e: RollbackProgress) => void;
}): Promise<RollbackOutcome> {
  const { store, target, runId } = opts;
  const run = await readRun(store, runId);
  if (!run) throw new RunbookRunNotFoundError(runId, opts.ledgerPath);
  const t0 = Date.now();
  const progress = (e: RollbackProgress) => opts.onProgress?.(e);
  const pending = run.steps.filter((s) => s.kind === "failover" && s.attempts > 0 && s.undo?.status !== "undone" && s.undo?.status !== "nothing-to-undo");
  // What happened last is undone first; an attempt that did not finish was the last thing the run did.
  pending.sort((a, b) => (b.succeededAt ?? Number.MAX_SAFE_INTEGER) - (a.succeededAt ?? Number.MAX_SAFE_INTEGER));
  if (pending.length === 0 && run.status === "rolled-back") return { runId, ok: true, undone: [], failed: [], alreadyClean: true };

  const rec = new RunRecorder(store, runId, run.version);
  await rec.append([EVENT.rollbackStarted, { steps: pending.map((s) => s.id) }]);
  progress({ type: "rollback-started", runId, steps: pending.map((s) => s.id), test: run.test });
  const undone: string[] = [];
  const failed: Array<{ stepId: string; error: string }> = [];
  for (const step of pending) {
    let outcome: { status: UndoStatus; action: string; detail: string };
    try {
      outcome = await undo(step, target);
    } catch (err) {
      outcome = { status: "failed", action: actionOf(step), detail: (err as Error).message };
    }
    await rec.append([EVENT.rollbackStep, { stepId: step.id, ...outcome }]);
    if (outcome.status === "undone") undone.push(step.id);
    if (outcome.status === "failed") failed.push({ stepId: step.id, error: outcome.detail });
    progress({ type: "undo-finished", runId, stepId: step.id, ...outcome, elapsedMs: Date.now() - t0 });
  }
  const ok = failed.length === 0;
  await rec.append([EVENT.rollbackFinished, { ok, durationMs: Date.now() - t0, undone, failed: failed.map((f) => f.stepId) }]);
  progress({ type: "rollback-finished", runId, ok, elapsedMs: Date.now() - t0 });
  return { runId, ok, undone, failed, alreadyClean: false };
}

function modeOf(step: StepRecord): string {
  return String((step.result as FailoverResult | undefined)?.mode ?? step.startData?.mode ?? "");
}

function actionOf(step: StepRecord): string {
  return modeOf(step) === "test" ? "stop test failover" : "cancel failover";
}

async function undo(step: StepRecord, target: RunbookTarget): Promise<{ status: UndoStatus; action: string; detail: string }> {
  const action = actionOf(step);
  const r = step.result as FailoverResult | undefined;
  const vm = r?.vm ?? String(step.startData?.vm ?? "");
  if (!vm) return { status: "nothing-to-undo", action, detail: "the step recorded no VM" };
  const st = await target.getStatus(vm);

  if (modeOf(step) === "test") {
    if (step.status === "succeeded" && r?.testId) {
      if (!st.testFailoverActive) return { status: "nothing-to-undo", action, detail: `VM ${vm}: test ${r.testId} was already stopped` };
      const stopped = await target.stopTestFailover(vm, r.testId);
      return { status: "undone", action, detail: `VM ${vm}: stopped test ${stopped.join(", ")}; its writes are discarded` };
    }
    // The site removes a test that failed to start; only an interrupted call leaves an unknown one.
    if (step.status === "started" && st.testFailoverActive) {
      return {
        status: "failed",
        action,
        detail: `VM ${vm}: the run was interrupted while starting a test failover and did not learn its id; check 'qreplica status' and stop it with 'qreplica test-failover stop ${vm}'`,
      };
    }
    return { status: "nothing-to-undo", action, detail: `VM ${vm}: the test failover never started` };
  }

  // Cancel only a failover this run made: same generation it recorded (or newer than before its attempt).
  const ours =
    step.status === "succeeded" ? st.generation === r?.generation : typeof step.startData?.generationBefore === "number" && st.generation > step.startData.generationBefore;
  if (!ours)
    return {
      status: "nothing-to-undo",
      action,
      detail: `VM ${vm}: ${step.status === "succeeded" ? "already undone" : "the failed attempt did not fail it over"} (state ${st.state}, generation ${st.generation})`,
    };
  if (st.state === "failed-over") {
    return {
      status: "failed",
      action,
      detail: `VM ${vm}: its failover was completed and can no longer be cancelled; fail back with a planned failover to the original site instead`,
    };
  }
  if (st.state !== "failed-over-waiting-completion") return { status: "nothing-to-undo", action, detail: `VM ${vm}: not failed over any more (state ${st.state})` };
  const state = await target.cancelFailover(vm);
  return { status: "undone", action, detail: `VM ${vm}: failover cancelled, the VM stopped and its writes discarded (state now ${state})` };
}
