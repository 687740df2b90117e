import { resolve } from "node:path";
import { createInterface } from "node:readline/promises";
import type { Command } from "commander";
import { getSqliteEventStore, type EventStore } from "../../ledger/index.js";
import {
  RunbookInvalidError,
  RunbookRunNotFoundError,
  executePlan,
  expandConsistencyGroups,
  formatProblem,
  hasConsistencyGroups,
  launchedVms,
  loadRunbook,
  planRunbook,
  readRun,
  resumeOptions,
  rollbackRun,
  type Runbook,
  type RunLogStore,
  type SiteRef,
} from "../../runbook/index.js";
import { ControlPlaneRunLog } from "../runbook/controlPlaneRunLog.js";
import { controlTarget, siteControlClient } from "../runbook/controlTarget.js";
import { formatPlan, formatProgress, formatRollbackProgress, formatRun } from "../runbook/format.js";
import type { SiteTargetOptions } from "../siteClient.js";
import { EXIT } from "../exitCodes.js";
import { emit, fail } from "../output.js";
import { withSiteOptions } from "../target.js";
import type { ProgressMode } from "../progress.js";
import { runbookCycleProgress } from "../runbookProgress.js";
import { withProgress } from "./wait.js";
import { groupPointResolver } from "./groups.js";

/** Exit codes scripts can rely on: 0 done, 1 could not start (site, ledger, arguments), 2 invalid runbook, 4 stopped at a step. */
const EXIT_INVALID = EXIT.invalid;
const EXIT_STOPPED = EXIT.runbookStopped;

function load(file: string, json: boolean): Runbook {
  try {
    return loadRunbook(file);
  } catch (err) {
    if (!(err instanceof RunbookInvalidError)) throw err;
    if (json) console.log(JSON.stringify({ ok: false, file: err.file, problems: err.problems }, null, 2));
    else
      console.error(
        `qreplica: runbook ${err.file} is not valid (${err.problems.length} problem${err.problems.length === 1 ? "" : "s"}):\n${err.problems.map((p) => `  ${formatProblem(p)}`).join("\n")}`,
      );
    process.exit(EXIT_INVALID);
  }
}

/** Where a run is recorded, for messages: the site's ledger, reached through its control plane. */
function whereOf(site: SiteRef): string {
  return "dir" in site ? `of the site in ${site.dir}` : `of the site at ${site.address}`;
}

/** The site named on the command line (--dir, or --site with --ca/--cert/--key), if any. */
function siteFromOptions(o: SiteTargetOptions): SiteRef | undefined {
  if (o.dir) return { dir: resolve(o.dir) };
  if (o.site) {
    if (!o.ca || !o.cert || !o.key) throw new Error("--site needs --ca, --cert and --key (a certificate with role operator to roll back, viewer to show)");
    return { address: o.site, ca: resolve(o.ca), cert: resolve(o.cert), key: resolve(o.key) };
  }
  return undefined;
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

const SITE_HELP = { dir: "the replica site's directory on this host (its address and admin certificate)", site: "the replica site's address" };

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
        emit(
          o.json,
          { ok: true, runbook: runbook.name, groups: runbook.groups.length, vms, steps },
          () => `runbook '${runbook.name}' is valid: ${runbook.groups.length} group(s), VMs ${vms.join(", ")}, ${steps} step(s)`,
        );
      } catch (err) {
        fail(err, o.json);
      }
    });

  rb.command("plan <file>")
    .description("print exactly the steps 'run' would perform, in order; touches nothing")
    .option("--test", "plan a drill: every VM as a test failover", false)
    .option("--json", "JSON output", false)
    .action(async (file: string, o: { test: boolean; json: boolean }) => {
      try {
        let runbook = load(file, o.json);
        if (hasConsistencyGroups(runbook)) {
          // Only the site knows a group's members and points: read (never changed) through its control plane.
          const client = siteControlClient(runbook.site);
          runbook = await expandConsistencyGroups(runbook, groupPointResolver(client));
          client.close();
        }
        const plan = planRunbook(runbook, { test: o.test });
        emit(o.json, plan, () => formatPlan(plan));
      } catch (err) {
        fail(err, o.json);
      }
    });

  withProgress(rb.command("run <file>"))
    .description("run a runbook against its replica site, recording every step in the site's ledger; a planned failover step shows its final cycle's progress on stderr")
    .option("--test", "a drill: every VM via test failover on an isolated network, nothing in production touched", false)
    .option("--yes", "pass confirm steps without asking (needed when no terminal can answer)", false)
    .option("--resume <runId>", "continue a stopped run from its failed step; steps that succeeded are skipped")
    .option("--json", "one JSON object per line: progress events, then the outcome", false)
    .action(async (file: string, o: { test: boolean; yes: boolean; resume?: string; json: boolean; progress: ProgressMode }) => {
      let target: ReturnType<typeof controlTarget> | undefined;
      try {
        let runbook = load(file, o.json);
        // One connection for the operations and the run's record: both go through the control plane.
        const client = siteControlClient(runbook.site);
        target = controlTarget(runbook.site, client);
        const store = new ControlPlaneRunLog(client);
        let planOpts: Parameters<typeof planRunbook>[1] = { test: o.test };
        let resume;
        if (o.resume) {
          resume = await readRun(store, o.resume);
          if (!resume) throw new RunbookRunNotFoundError(o.resume, whereOf(runbook.site));
          planOpts = resumeOptions(resume, runbook.name, o.test);
          if (planOpts.test && !o.test && !o.json) console.log(`run ${o.resume} is a drill: resuming it as a drill`);
        }
        // Members of a consistency group already failed over in the resumed run fix its group point.
        const pinned = new Map([...(resume ? launchedVms(resume) : new Map())].map(([vm, r]) => [vm, r.pointId as string]));
        runbook = await expandConsistencyGroups(runbook, groupPointResolver(client), pinned);
        const plan = planRunbook(runbook, planOpts);
        const idWidth = Math.max(...plan.steps.map((s) => s.id.length));
        const cycles = runbookCycleProgress(client, plan.steps, o.progress);
        // Printed in order: a step's end waits for the last look at its cycles.
        let printing = Promise.resolve();
        let chained = 0;
        const print = (e: Parameters<NonNullable<Parameters<typeof executePlan>[0]["onProgress"]>>[0]) => {
          if (o.json) console.log(JSON.stringify(e));
          else if (e.type === "run-finished" && e.status === "stopped") console.error(`qreplica: ${formatProgress(e, idWidth)}`);
          else console.log(formatProgress(e, idWidth));
        };
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
            // Synchronous unless a planned failover's watch must end first (a confirm prompt
            // follows its step's start line at once).
            if (!cycles.watching() && !chained) {
              print(e);
              if (e.type === "step-started") cycles.started(e.stepId);
              return;
            }
            chained++;
            printing = printing.then(async () => {
              if (e.type !== "step-started") await cycles.ended();
              print(e);
              if (e.type === "step-started") cycles.started(e.stepId);
              chained--;
            });
          },
        });
        await printing;
        if (outcome.status === "stopped") process.exitCode = EXIT_STOPPED;
      } catch (err) {
        fail(err, o.json);
      } finally {
        target?.close();
      }
    });

  withSiteOptions(rb.command("rollback <runId>").description("undo what a run did, newest first: stop its test failovers, cancel its failovers"), SITE_HELP)
    .option("--json", "one JSON object per line", false)
    .action(async (runId: string, o: SiteTargetOptions & { json: boolean }) => {
      let target: ReturnType<typeof controlTarget> | undefined;
      try {
        const site = siteFromOptions(o);
        if (!site) throw new Error("which site recorded the run? pass --dir SITE_DIR (the replica site), or --site HOST:PORT with --ca, --cert and --key");
        const client = siteControlClient(site);
        target = controlTarget(site, client);
        const store = new ControlPlaneRunLog(client);
        const outcome = await rollbackRun({
          store,
          target,
          runId,
          ledgerPath: whereOf(site),
          onProgress: (e) => console.log(o.json ? JSON.stringify(e) : formatRollbackProgress(e)),
        });
        if (outcome.alreadyClean && !o.json) console.log(`run ${runId} was already rolled back`);
        if (!outcome.ok) process.exitCode = EXIT_STOPPED;
      } catch (err) {
        fail(err, o.json);
      } finally {
        target?.close();
      }
    });

  withSiteOptions(rb.command("show <runId>").description("the recorded steps of a run: status, attempts, durations, RTO, what was undone"), SITE_HELP)
    .option("--ledger <file>", "read a ledger file instead (e.g. a copy taken off the site), without any site")
    .option("--json", "JSON output", false)
    .action(async (runId: string, o: SiteTargetOptions & { ledger?: string; json: boolean }) => {
      let store: (RunLogStore & { close?(): Promise<void> | void }) | undefined;
      try {
        let where: string;
        if (o.ledger) {
          store = getSqliteEventStore({ path: resolve(o.ledger), create: false }) satisfies EventStore;
          where = resolve(o.ledger);
        } else {
          const site = siteFromOptions(o);
          if (!site) throw new Error("which site recorded the run? pass --dir SITE_DIR, --site HOST:PORT with --ca/--cert/--key, or --ledger FILE");
          const client = siteControlClient(site);
          store = Object.assign(new ControlPlaneRunLog(client), { close: () => client.close() });
          where = whereOf(site);
        }
        const run = await readRun(store, runId);
        if (!run) throw new RunbookRunNotFoundError(runId, where);
        emit(o.json, run, () => formatRun(run));
      } catch (err) {
        fail(err, o.json);
      } finally {
        await store?.close?.();
      }
    });
}
