import { resolve } from "node:path";
import { createInterface } from "node:readline/promises";
import type { Command } from "commander";
import { getSqliteEventStore, type EventStore } from "../../ledger/index.js";
import {
  RunbookInvalidError,
  RunbookRunNotFoundError,
  controlTarget,
  executePlan,
  formatProblem,
  loadRunbook,
  planRunbook,
  readRun,
  resumeOptions,
  rollbackRun,
  type Runbook,
  type SiteRef,
} from "../../runbook/index.js";
import { formatPlan, formatProgress, formatRollbackProgress, formatRun } from "../../runbook/format.js";
import { loadSiteConfig } from "../../site/siteConfig.js";
import { emit, fail } from "../output.js";

/** Exit codes scripts can rely on: 0 done, 1 could not start (site, ledger, arguments), 2 invalid runbook, 4 stopped at a step. */
const EXIT_INVALID = 2;
const EXIT_STOPPED = 4;

function load(file: string, json: boolean): Runbook {
  try {
    return loadRunbook(file);
  } catch (err) {
    if (!(err instanceof RunbookInvalidError)) throw err;
    if (json) console.log(JSON.stringify({ ok: false, file: err.file, problems: err.problems }, null, 2));
    else console.error(`qreplica: runbook ${err.file} is not valid (${err.problems.length} problem${err.problems.length === 1 ? "" : "s"}):\n${err.problems.map((p) => `  ${formatProblem(p)}`).join("\n")}`);
    process.exit(EXIT_INVALID);
  }
}

function ledgerPathOf(site: SiteRef): string {
  return "dir" in site ? loadSiteConfig(site.dir).ledgerPath : site.ledger;
}

function openLedger(path: string): EventStore {
  return getSqliteEventStore({ path, create: false });
}

function ledgerFromOptions(o: { dir?: string; ledger?: string }): string {
  if (o.ledger) return resolve(o.ledger);
  if (o.dir) return loadSiteConfig(resolve(o.dir)).ledgerPath;
  throw new Error("which site recorded the run? pass --dir SITE_DIR (the replica site), or --ledger FILE");
}

async function askOnTerminal(prompt: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await rl.question(`\n  CONFIRM: ${prompt}\n  Type 'yes' to continue, anything else to stop the run here: `);
    return /^y(es)?$/i.test(answer.trim());
  } finally {
    rl.close();
  }
}

export function registerRunbook(program: Command): void {
  const rb = program.command("runbook").description("recovery plans as code: validate, plan, run or drill (--test), resume, roll back, show");

  rb.command("validate <file>")
    .description("check a runbook file and report every problem with its path and fix")
    .option("--json", "JSON output", false)
    .action((file: string, o: { json: boolean }) => {
      try {
        const runbook = load(file, o.json);
        const vms = runbook.groups.flatMap((g) => g.vms.map((v) => v.vm));
        const steps = runbook.groups.reduce((n, g) => n + g.steps.length, 0);
        emit(o.json, { ok: true, runbook: runbook.name, groups: runbook.groups.length, vms, steps }, () => `runbook '${runbook.name}' is valid: ${runbook.groups.length} group(s), VMs ${vms.join(", ")}, ${steps} step(s)`);
      } catch (err) {
        fail(err, o.json);
      }
    });

  rb.command("plan <file>")
    .description("print exactly the steps 'run' would perform, in order; touches nothing")
    .option("--test", "plan a drill: every VM as a test failover", false)
    .option("--json", "JSON output", false)
    .action((file: string, o: { test: boolean; json: boolean }) => {
      try {
        const plan = planRunbook(load(file, o.json), { test: o.test });
        emit(o.json, plan, () => formatPlan(plan));
      } catch (err) {
        fail(err, o.json);
      }
    });

  rb.command("run <file>")
    .description("run a runbook against its replica site, recording every step in the site's ledger")
    .option("--test", "a drill: every VM via test failover on an isolated network, nothing in production touched", false)
    .option("--yes", "pass confirm steps without asking (needed when no terminal can answer)", false)
    .option("--resume <runId>", "continue a stopped run from its failed step; steps that succeeded are skipped")
    .option("--json", "one JSON object per line: progress events, then the outcome", false)
    .action(async (file: string, o: { test: boolean; yes: boolean; resume?: string; json: boolean }) => {
      let store: EventStore | undefined;
      let target: ReturnType<typeof controlTarget> | undefined;
      try {
        const runbook = load(file, o.json);
        const ledgerPath = ledgerPathOf(runbook.site);
        store = openLedger(ledgerPath);
        let planOpts: Parameters<typeof planRunbook>[1] = { test: o.test };
        let resume;
        if (o.resume) {
          resume = await readRun(store, o.resume);
          if (!resume) throw new RunbookRunNotFoundError(o.resume, ledgerPath);
          planOpts = resumeOptions(resume, runbook.name, o.test);
          if (planOpts.test && !o.test && !o.json) console.log(`run ${o.resume} is a drill: resuming it as a drill`);
        }
        const plan = planRunbook(runbook, planOpts);
        target = controlTarget(runbook.site);
        const idWidth = Math.max(...plan.steps.map((s) => s.id.length));
        const abort = new AbortController();
        process.once("SIGINT", () => {
          console.error("\ninterrupted: stopping the current step (Ctrl-C again to quit at once)");
          abort.abort();
        });
        const outcome = await executePlan({
          plan,
          target,
          store,
          file,
          ...(resume ? { resume } : {}),
          yes: o.yes,
          ...(process.stdin.isTTY && !o.yes ? { ask: askOnTerminal } : {}),
          signal: abort.signal,
          onProgress: (e) => {
            if (o.json) console.log(JSON.stringify(e));
            else if (e.type === "run-finished" && e.status === "stopped") console.error(`qreplica: ${formatProgress(e, idWidth)}`);
            else console.log(formatProgress(e, idWidth));
          },
        });
        if (outcome.status === "stopped") process.exitCode = EXIT_STOPPED;
      } catch (err) {
        fail(err, o.json);
      } finally {
        target?.close();
        await store?.close();
      }
    });

  rb.command("rollback <runId>")
    .description("undo what a run did, newest first: stop its test failovers, cancel its failovers")
    .option("--dir <dir>", "the replica site's directory (its ledger and control plane)")
    .option("--ledger <file>", "the ledger file that recorded the run (the control plane is the run's recorded site)")
    .option("--json", "one JSON object per line", false)
    .action(async (runId: string, o: { dir?: string; ledger?: string; json: boolean }) => {
      let store: EventStore | undefined;
      let target: ReturnType<typeof controlTarget> | undefined;
      try {
        const ledgerPath = ledgerFromOptions(o);
        store = openLedger(ledgerPath);
        const run = await readRun(store, runId);
        if (!run) throw new RunbookRunNotFoundError(runId, ledgerPath);
        target = controlTarget(o.dir ? { dir: resolve(o.dir) } : run.site);
        const outcome = await rollbackRun({ store, target, runId, ledgerPath, onProgress: (e) => console.log(o.json ? JSON.stringify(e) : formatRollbackProgress(e)) });
        if (outcome.alreadyClean && !o.json) console.log(`run ${runId} was already rolled back`);
        if (!outcome.ok) process.exitCode = EXIT_STOPPED;
      } catch (err) {
        fail(err, o.json);
      } finally {
        target?.close();
        await store?.close();
      }
    });

  rb.command("show <runId>")
    .description("the recorded steps of a run: status, attempts, durations, RTO, what was undone")
    .option("--dir <dir>", "the replica site's directory")
    .option("--ledger <file>", "the ledger file that recorded the run")
    .option("--json", "JSON output", false)
    .action(async (runId: string, o: { dir?: string; ledger?: string; json: boolean }) => {
      let store: EventStore | undefined;
      try {
        const ledgerPath = ledgerFromOptions(o);
        store = openLedger(ledgerPath);
        const run = await readRun(store, runId);
        if (!run) throw new RunbookRunNotFoundError(runId, ledgerPath);
        emit(o.json, run, () => formatRun(run));
      } catch (err) {
        fail(err, o.json);
      } finally {
        await store?.close();
      }
    });
}
