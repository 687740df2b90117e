import { localProbes, runHook, waitUntil } from "./checks.js";
import { RunbookResumeRefusedError } from "./errors.js";
import type { SiteRef } from "./model.js";
import type { Plan, PlanStep, ResumeFrom } from "./planner.js";
import { EVENT, RunRecorder, launchedVms, newRunId, runStream, type FailoverResult, type RunRecord } from "./runLog.js";
import { RUN_LOG_NO_STREAM, type RunLogStore } from "./runLogStore.js";
import type { Probes, RunbookTarget } from "./target.js";

export type ProgressEvent =
  | { type: "run-started"; runId: string; runbook: string; test: boolean; steps: number; resumed: boolean; stream: string }
  | { type: "step-started"; runId: string; stepId: string; description: string; elapsedMs: number }
  | { type: "step-finished"; runId: string; stepId: string; status: "succeeded" | "failed" | "skipped"; durationMs: number; elapsedMs: number; detail: string }
  | { type: "run-finished"; runId: string; status: "succeeded" | "stopped"; elapsedMs: number; rtoMs?: number; stepId?: string; error?: string; next: string[] };

export interface ExecuteOptions {
  plan: Plan;
  target: RunbookTarget;
  /** Where the run is recorded: the site's ledger through its control plane (ControlPlaneRunLog). */
  store: RunLogStore;
  /** The runbook file as the operator named it, for the resume command printed on a stop. */
  file: string;
  /** The recorded run to continue (see resumeOptions); a new run otherwise. */
  resume?: RunRecord;
  runId?: string;
  /** Confirm steps pass without asking (non-interactive runs). */
  yes?: boolean;
  /** Asks the operator; absent when nobody can answer (no terminal). */
  ask?: (prompt: string) => Promise<boolean>;
  onProgress?: (e: ProgressEvent) => void;
  probes?: Probes;
  pollIntervalMs?: number;
  /** Ctrl-C: the step in flight fails, the run is recorded as stopped and can be resumed. */
  signal?: AbortSignal;
}

export interface RunOutcome {
  runId: string;
  status: "succeeded" | "stopped";
  stepId?: string;
  error?: string;
  /** Run start to the last VM running or the last wait satisfied. */
  rtoMs?: number;
  next: string[];
}

class StepError extends Error {
  constructor(
    message: string,
    readonly needsYes = false,
  ) {
    super(message);
  }
}

/** The command-line arguments that name the site whose ledger records a run. */
export function ledgerArgs(site: SiteRef): string {
  return "dir" in site ? `--dir ${site.dir}` : `--site ${site.address} --ca ${site.ca} --cert ${site.cert} --key ${site.key}`;
}

/**
 * How a recorded run may be resumed. The recorded mode wins: resuming a drill never turns its
 * remaining VMs into real failovers, and a real run cannot be continued as a drill.
 */
export function resumeOptions(run: RunRecord, runbookName: string, testFlag: boolean): { test: boolean; resumeFrom: ResumeFrom } {
  const refuse = (why: string) => {
    throw new RunbookResumeRefusedError(`cannot resume run ${run.runId}: ${why}`);
  };
  if (run.runbook !== runbookName) refuse(`it ran runbook '${run.runbook}', not '${runbookName}': pass the same runbook file`);
  if (run.status === "succeeded") refuse("it already succeeded; nothing to resume");
  if (run.status.startsWith("roll")) refuse(`it was rolled back (${run.status}); start a new run without --resume`);
  if (testFlag && !run.test) refuse("it is a real failover run, not a drill: resume it without --test");
  const succeeded = new Set(run.steps.filter((s) => s.status === "succeeded").map((s) => s.id));
  // Preflight is a check, never an action: it runs again against the site as it is now.
  succeeded.delete("preflight");
  return { test: run.test, resumeFrom: { runId: run.runId, succeeded } };
}

/** Runs a plan step by step, recording each in the ledger; stops at the first failing step. */
export async function executePlan(opts: ExecuteOptions): Promise<RunOutcome> {
  const { plan, target, store } = opts;
  const probes = opts.probes ?? localProbes;
  const pollMs = opts.pollIntervalMs ?? 1000;
  const resume = opts.resume;
  const runId = resume?.runId ?? opts.runId ?? newRunId();
  const rec = new RunRecorder(store, runId, resume ? resume.version : RUN_LOG_NO_STREAM);
  const t0 = Date.now();
  const progress = (e: ProgressEvent) => opts.onProgress?.(e);
  const summary = plan.steps.map((s) => ({ id: s.id, kind: s.kind, description: s.description }));
  if (resume) await rec.append([EVENT.runResumed, { steps: summary, skipped: plan.steps.filter((s) => s.skip).map((s) => s.id) }]);
  else await rec.append([EVENT.runStarted, { runId, runbook: plan.runbook, file: opts.file, test: plan.test, site: plan.site, steps: summary }]);
  const runStartedAt = resume ? Date.parse(resume.startedAt) : t0;
  progress({ type: "run-started", runId, runbook: plan.runbook, test: plan.test, steps: plan.steps.length, resumed: !!resume, stream: runStream(runId) });

  const launched = resume ? launchedVms(resume) : new Map<string, FailoverResult>();
  // When each VM came up or each wait was satisfied: the RTO ends at the latest of these.
  const readyAt = new Map<string, number>();
  for (const s of resume?.steps ?? []) if (s.status === "succeeded" && (s.kind === "failover" || s.kind === "wait") && s.endedAt) readyAt.set(s.id, Date.parse(s.endedAt));

  const rollbackCmd = `qreplica runbook rollback ${runId} ${ledgerArgs(plan.site)}`;
  for (const step of plan.steps) {
    if (step.skip) {
      await rec.append([EVENT.stepSkipped, { stepId: step.id, reason: step.skip }]);
      progress({ type: "step-finished", runId, stepId: step.id, status: "skipped", durationMs: 0, elapsedMs: Date.now() - t0, detail: step.skip });
      continue;
    }
    progress({ type: "step-started", runId, stepId: step.id, description: step.description, elapsedMs: Date.now() - t0 });
    const s0 = Date.now();
    let failure: unknown;
    let startData: Record<string, unknown> = {};
    try {
      if (opts.signal?.aborted) throw new StepError("interrupted by the operator before the step started");
      // Recorded before a real failover, so a rollback can tell whether the site did fail over.
      if (step.kind === "failover") {
        startData = { vm: step.vm, mode: step.mode };
        if (step.mode !== "test") startData.generationBefore = (await target.getStatus(step.vm)).generation;
      }
    } catch (err) {
      failure = err;
    }
    await rec.append([EVENT.stepStarted, { stepId: step.id, kind: step.kind, data: startData }]);
    let done: { result: Record<string, unknown>; detail: string } | undefined;
    if (!failure) {
      try {
        done = await runStep(step);
      } catch (err) {
        failure = err;
      }
    }
    const durationMs = Date.now() - s0;
    if (failure || !done) {
      const error = (failure as Error)?.message ?? String(failure);
      await rec.append([EVENT.stepFailed, { stepId: step.id, durationMs, error }], [EVENT.runStopped, { stepId: step.id, error }]);
      progress({ type: "step-finished", runId, stepId: step.id, status: "failed", durationMs, elapsedMs: Date.now() - t0, detail: error });
      const yes = failure instanceof StepError && failure.needsYes ? " --yes" : "";
      const next = [`fix the cause, then continue from this step: qreplica runbook run ${opts.file} --resume ${runId}${yes}`, `or undo what the run did: ${rollbackCmd}`];
      const message = `run ${runId} stopped at step ${step.id} (${step.description}): ${error}`;
      progress({ type: "run-finished", runId, status: "stopped", elapsedMs: Date.now() - t0, stepId: step.id, error: message, next });
      return { runId, status: "stopped", stepId: step.id, error: message, next };
    }
    await rec.append([EVENT.stepSucceeded, { stepId: step.id, durationMs, result: done.result }]);
    if (step.kind === "failover" || step.kind === "wait") readyAt.set(step.id, Date.now());
    progress({ type: "step-finished", runId, stepId: step.id, status: "succeeded", durationMs, elapsedMs: Date.now() - t0, detail: done.detail });
  }

  const [lastStepId, end] = [...readyAt.entries()].reduce((a, b) => (b[1] >= a[1] ? b : a), ["", runStartedAt]);
  const rtoMs = end - runStartedAt;
  // A resumed run's RTO includes the time it stood stopped: that is the outage the users saw.
  await rec.append(
    [EVENT.rtoMeasured, { rtoMs, lastStepId, from: new Date(runStartedAt).toISOString(), to: new Date(end).toISOString(), includesStops: !!resume }],
    [EVENT.runSucceeded, { durationMs: Date.now() - runStartedAt }],
  );
  const real = [...launched.values()].filter((r) => r.mode !== "test").map((r) => r.vm);
  const next = plan.test
    ? [`end the drill (stop the test VMs, discard their writes): ${rollbackCmd}`]
    : [
        ...(real.length ? [`commit: qreplica failover <vm> complete ${"dir" in plan.site ? `--dir ${plan.site.dir}` : `--site ${plan.site.address}`} for ${real.join(", ")}`] : []),
        `or go back: ${rollbackCmd}`,
      ];
  progress({ type: "run-finished", runId, status: "succeeded", elapsedMs: Date.now() - t0, rtoMs, next });
  return { runId, status: "succeeded", rtoMs, next };

  async function runStep(step: PlanStep): Promise<{ result: Record<string, unknown>; detail: string }> {
    switch (step.kind) {
      case "preflight":
        return preflight(step.vms);
      case "failover": {
        if (step.mode === "test") {
          const r = await target.startTestFailover(step.vm, step.point);
          const result: FailoverResult = { vm: step.vm, mode: "test", pointId: r.pointId, testId: r.testId, launched: r.vm };
          launched.set(step.vm, result);
          return { result: { ...result }, detail: `test ${r.testId} on point ${r.pointId}, running after ${r.vm.timeToRunningMs} ms` };
        }
        const r = await target.failover(step.vm, step.mode, step.point);
        const result: FailoverResult = { vm: step.vm, mode: step.mode, pointId: r.pointId, generation: r.generation, ...(r.vm ? { launched: r.vm } : {}) };
        launched.set(step.vm, result);
        return { result: { ...result }, detail: `point ${r.pointId}, generation ${r.generation}, running after ${r.vm?.timeToRunningMs ?? "?"} ms` };
      }
      case "wait":
        return waitStep(step);
      case "confirm":
        if (opts.yes) return { result: { confirmedBy: "--yes" }, detail: "confirmed by --yes" };
        if (!opts.ask) throw new StepError(`needs the operator to confirm: "${step.prompt}". Nobody can answer here (no terminal): do what it asks, then resume with --yes`, true);
        if (!(await opts.ask(step.prompt))) throw new StepError(`the operator did not confirm: "${step.prompt}"`, true);
        return { result: { confirmedBy: "operator" }, detail: "confirmed by the operator" };
      case "hook":
        return hookStep(step);
    }
  }

  async function preflight(vms: Array<{ vm: string; mode: string; point?: string }>) {
    const problems: string[] = [];
    for (const v of vms) {
      try {
        const st = await target.getStatus(v.vm);
        if (v.mode !== "test" && st.state.startsWith("failed-over")) problems.push(`VM ${v.vm} is already failed over (${st.state}): complete or cancel that failover first`);
        const points = await target.listRecoveryPoints(v.vm);
        if (points.length === 0) problems.push(`VM ${v.vm} has no recovery point yet: wait for its initial replication`);
        // last-clean is resolved by the site's ledger when the step runs (it refuses when no point qualifies).
        else if (v.point && v.point !== "last-clean" && !points.includes(v.point))
          problems.push(`VM ${v.vm} has no recovery point '${v.point}' (it has ${points.slice(-5).join(", ")}${points.length > 5 ? ", ..." : ""}): fix its point in the runbook`);
      } catch (err) {
        problems.push(`VM ${v.vm}: ${(err as Error).message}`);
      }
    }
    if (problems.length) throw new StepError(problems.join("; "));
    return { result: { checked: vms.map((v) => v.vm) }, detail: `${vms.length} VM${vms.length === 1 ? "" : "s"} ready to fail over` };
  }

  function launchedOf(vm: string): FailoverResult & { launched: NonNullable<FailoverResult["launched"]> } {
    const r = launched.get(vm);
    if (!r?.launched) throw new StepError(`VM ${vm} was not launched by this run (its failover step has not succeeded)`);
    return r as FailoverResult & { launched: NonNullable<FailoverResult["launched"]> };
  }

  async function waitStep(step: Extract<PlanStep, { kind: "wait" }>) {
    let check: () => Promise<true | string>;
    if (step.wait === "vm-running") {
      const vms = step.vms.map(launchedOf);
      check = async () => {
        for (const v of vms) if (!(await target.vmRunning(v.vm, v.launched, v.mode === "test"))) return `VM ${v.vm} is not running`;
        return true;
      };
    } else if (step.wait === "tcp-port") {
      check = async () => {
        const why = await probes.tcpConnect(step.host, step.port, Math.max(250, Math.min(3000, pollMs)));
        return why === undefined ? true : `${step.host}:${step.port} does not accept connections (${why})`;
      };
    } else {
      const path = launchedOf(step.vm).launched.serialLog;
      const re = new RegExp(step.pattern, "m");
      check = async () => {
        const text = await probes.readSerialLog(path);
        if (text === undefined) return `the serial log ${path} cannot be read from this host (serial-log waits need the runbook run on the replica site's host)`;
        return re.test(text) ? true : `no match for /${step.pattern}/ in ${step.vm}'s serial log ${path}`;
      };
    }
    const r = await waitUntil(check, step.timeoutMs, pollMs, opts.signal);
    if (!r.ok) throw new StepError(opts.signal?.aborted ? `interrupted by the operator: ${r.lastReason}` : `timed out after ${step.timeoutMs / 1000} s: ${r.lastReason}`);
    return { result: { waitedMs: r.waitedMs }, detail: `satisfied after ${(r.waitedMs / 1000).toFixed(1)} s` };
  }

  async function hookStep(step: Extract<PlanStep, { kind: "hook" }>) {
    const v = step.vm ? launched.get(step.vm) : undefined;
    const env: Record<string, string> = {
      ...step.env,
      QREPLICA_RUN_ID: runId,
      QREPLICA_RUNBOOK: plan.runbook,
      QREPLICA_STEP_ID: step.id,
      QREPLICA_GROUP: step.groupName ?? String(step.group),
      QREPLICA_TEST: plan.test ? "1" : "0",
      QREPLICA_VMS: step.groupVms.join(" "),
      ...(step.vm ? { QREPLICA_VM: step.vm } : {}),
      ...(v ? { QREPLICA_FAILOVER: v.mode, QREPLICA_RECOVERY_POINT: v.pointId, ...(v.launched ? { QREPLICA_SERIAL_LOG: v.launched.serialLog } : {}) } : {}),
    };
    const o = await runHook(step.command, step.args, { cwd: step.cwd, env, timeoutMs: step.timeoutMs, signal: opts.signal });
    const tail = o.outputTail.trim() ? `; its last output: ${o.outputTail.trim().split("\n").slice(-5).join(" | ")}` : "";
    if (opts.signal?.aborted) throw new StepError(`interrupted by the operator; ${step.command} was stopped${tail}`);
    if (o.spawnError) throw new StepError(`could not start ${step.command}: ${o.spawnError}`);
    if (o.timedOut) throw new StepError(`${step.command} did not finish within ${step.timeoutMs / 1000} s and was killed${tail}`);
    if (o.exitCode !== 0) throw new StepError(`${step.command} ${o.exitCode === null ? `was killed by ${o.signal}` : `exited with code ${o.exitCode}`}${tail}`);
    return { result: { exitCode: 0, outputTail: o.outputTail }, detail: "exit code 0" };
  }
}
