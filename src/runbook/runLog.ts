import { randomBytes } from "node:crypto";
import type { SiteRef } from "./model.js";
import { RUN_LOG_NO_STREAM, type RunLogExpectedVersion, type RunLogNewEvent, type RunLogStore } from "./runLogStore.js";
import type { LaunchedVm } from "./target.js";

/**
 * A runbook run as recorded in the ledger, stream `runbook-<runId>`. The ledger is the run's only
 * memory: resume reads which steps succeeded, rollback reads what to undo, show prints it.
 */
export const RUNBOOK_STREAM_PREFIX = "runbook-";
export const runStream = (runId: string) => `${RUNBOOK_STREAM_PREFIX}${runId}`;

export const EVENT = {
  runStarted: "RunbookRunStarted",
  runResumed: "RunbookRunResumed",
  stepStarted: "RunbookStepStarted",
  stepSucceeded: "RunbookStepSucceeded",
  stepFailed: "RunbookStepFailed",
  stepSkipped: "RunbookStepSkipped",
  rtoMeasured: "RunbookRtoMeasured",
  runSucceeded: "RunbookRunSucceeded",
  runStopped: "RunbookRunStopped",
  rollbackStarted: "RunbookRollbackStarted",
  rollbackStep: "RunbookRollbackStep",
  rollbackFinished: "RunbookRollbackFinished",
} as const;

export type StepStatus = "pending" | "started" | "succeeded" | "failed";
export type UndoStatus = "undone" | "nothing-to-undo" | "failed";

/** What a failover step did; rollback undoes exactly this. */
export interface FailoverResult {
  vm: string;
  mode: "test" | "planned" | "unplanned";
  pointId: string;
  testId?: string;
  generation?: number;
  launched?: LaunchedVm;
}

export interface StepRecord {
  id: string;
  kind: string;
  description: string;
  status: StepStatus;
  attempts: number;
  startedAt?: string;
  endedAt?: string;
  durationMs?: number;
  /** Data recorded when the step started, e.g. the generation before a failover. */
  startData?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: string;
  /** Ledger version of the success, to undo in reverse order. */
  succeededAt?: number;
  undo?: { status: UndoStatus; action: string; detail: string };
}

export type RunStatus = "running" | "succeeded" | "stopped" | "rolling-back" | "rolled-back" | "rollback-incomplete";

export interface RunRecord {
  runId: string;
  runbook: string;
  file: string;
  test: boolean;
  site: SiteRef;
  startedAt: string;
  status: RunStatus;
  steps: StepRecord[];
  resumes: number;
  stopped?: { stepId: string; error: string };
  rtoMs?: number;
  durationMs?: number;
  /** Last version of the stream, for the next optimistic append. */
  version: bigint;
}

/** Sortable, readable, and unique enough to type: 20250614-101530-3f9a. */
export function newRunId(now = new Date()): string {
  const t = now.toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  return `${t}-${randomBytes(2).toString("hex")}`;
}

/** Appends with optimistic concurrency: two processes driving one run cannot interleave silently. */
export class RunRecorder {
  constructor(
    private readonly store: RunLogStore,
    readonly runId: string,
    private expected: RunLogExpectedVersion = RUN_LOG_NO_STREAM,
  ) {}

  async append(...events: Array<[type: string, data: Record<string, unknown>]>): Promise<void> {
    const batch: RunLogNewEvent[] = events.map(([type, data]) => ({ type, data: { ...data, at: new Date().toISOString() } }));
    const r = await this.store.append(runStream(this.runId), batch, this.expected);
    this.expected = r.nextExpectedVersion;
  }
}

export async function readRun(store: RunLogStore, runId: string): Promise<RunRecord | undefined> {
  const events = await store.readStream(runStream(runId));
  if (events.length === 0 || events[0]!.type !== EVENT.runStarted) return undefined;
  const start = events[0]!.data as { runbook: string; file: string; test: boolean; site: SiteRef; steps: Array<{ id: string; kind: string; description: string }>; at: string };
  const steps = new Map<string, StepRecord>();
  let order: string[] = [];
  const declare = (list: Array<{ id: string; kind: string; description: string }>) => {
    for (const s of list) {
      const known = steps.get(s.id);
      if (known) Object.assign(known, { kind: s.kind, description: s.description });
      else steps.set(s.id, { id: s.id, kind: s.kind, description: s.description, status: "pending", attempts: 0 });
    }
    order = [...list.map((s) => s.id), ...order.filter((id) => !list.some((s) => s.id === id))];
  };
  declare(start.steps);
  const run: RunRecord = {
    runId,
    runbook: start.runbook,
    file: start.file,
    test: start.test,
    site: start.site,
    startedAt: start.at,
    status: "running",
    steps: [],
    resumes: 0,
    version: 0n,
  };
  for (const e of events) {
    const d = e.data as Record<string, unknown> & { stepId?: string; at?: string };
    const step = d.stepId === undefined ? undefined : steps.get(d.stepId);
    run.version = e.version;
    switch (e.type) {
      case EVENT.runResumed:
        run.status = "running";
        run.resumes++;
        run.stopped = undefined;
        declare(d.steps as Array<{ id: string; kind: string; description: string }>);
        break;
      case EVENT.stepStarted:
        if (step) Object.assign(step, { status: "started", attempts: step.attempts + 1, startedAt: d.at, startData: d.data, error: undefined });
        break;
      case EVENT.stepSucceeded:
        if (step) Object.assign(step, { status: "succeeded", endedAt: d.at, durationMs: d.durationMs, result: d.result, succeededAt: Number(e.version) });
        break;
      case EVENT.stepFailed:
        if (step) Object.assign(step, { status: "failed", endedAt: d.at, durationMs: d.durationMs, error: d.error });
        break;
      case EVENT.runStopped:
        run.status = "stopped";
        run.stopped = { stepId: String(d.stepId), error: String(d.error) };
        break;
      case EVENT.rtoMeasured:
        run.rtoMs = d.rtoMs as number;
        break;
      case EVENT.runSucceeded:
        run.status = "succeeded";
        run.durationMs = d.durationMs as number;
        break;
      case EVENT.rollbackStarted:
        run.status = "rolling-back";
        break;
      case EVENT.rollbackStep:
        if (step) step.undo = { status: d.status as UndoStatus, action: String(d.action), detail: String(d.detail) };
        break;
      case EVENT.rollbackFinished:
        run.status = d.ok ? "rolled-back" : "rollback-incomplete";
        break;
    }
  }
  run.steps = order.map((id) => steps.get(id)!);
  return run;
}

/** The VMs a run launched, as recorded: a resumed run's waits and hooks need their serial logs. */
export function launchedVms(run: RunRecord): Map<string, FailoverResult> {
  const out = new Map<string, FailoverResult>();
  for (const s of run.steps) {
    const r = s.result as FailoverResult | undefined;
    if (s.kind === "failover" && s.status === "succeeded" && r?.vm) out.set(r.vm, r);
  }
  return out;
}
