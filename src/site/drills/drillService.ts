/**
 * Verification drills (README "Verified recovery points"): a test failover of a point on the
 * isolated network, the policy's checks against the test VM (checks.ts), the result recorded with
 * the point (VerificationDrillRecorded), and the test VM stopped, whatever happened. The drill
 * holds its point against retention merges (a running test does) for at most the policy's
 * `timeout` plus the stop; a site that stops cancels its drills and stops their VMs.
 */
import { errorMessage } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import {
  executeCommand,
  loadRelationship,
  recordVerificationDrill,
  type DrillCheckOutcome,
  type DrillTrigger,
  type EventStore,
  type RelationshipState,
} from "../../ledger/index.js";
import type { VerificationPolicy } from "../../policy/types.js";
import { VmLaunchError } from "../launcher/index.js";
import type { Caller } from "../controlPlane/caller.js";
import { actorMetadata } from "../controlPlane/caller.js";
import type { FailoverService } from "../failover/failoverService.js";
import { RecoveryPointUnavailableError } from "../../ledger/index.js";
import { runChecks } from "./checks.js";
import { DrillRunningError, DrillsStoppedError, VerificationNotConfiguredError } from "./errors.js";
import { siteVmTarget } from "./vmTarget.js";
import { launchSpecOf } from "../failover/defaultSpec.js";

export interface DrillReport {
  drillId: string;
  pointId: string;
  trigger: DrillTrigger;
  result: "verified" | "failed";
  failedCheck?: DrillCheckOutcome["check"];
  message?: string;
  timeToVerifiedMs?: number;
  checks: DrillCheckOutcome[];
  finishedAt: string;
}

export interface DrillDeps {
  store: EventStore;
  failovers: FailoverService;
  /** The VM's effective policy's drill settings and its name. */
  verificationOf: (vmId: string) => { policyName: string; verification: VerificationPolicy | undefined };
  /** Serializes the test failover's start with the VM's commits and merges (as StartTestFailover does). */
  serialize: <T>(vmId: string, fn: () => Promise<T>) => Promise<T>;
  logger: Logger;
  clock?: () => number;
}

interface Running {
  drillId: string;
  pointId: string;
  abort: AbortController;
  ended: Promise<unknown>;
}

export class DrillService {
  private readonly running = new Map<string, Running>();
  private stopped = false;

  constructor(private readonly deps: DrillDeps) {}

  /** The drill running for the VM, if any. */
  runningDrill(vmId: string): { drillId: string; pointId: string } | undefined {
    const r = this.running.get(vmId);
    return r && { drillId: r.drillId, pointId: r.pointId };
  }

  /**
   * Starts a drill of `pointId` (the newest openable point when absent) and returns once its test
   * VM was launched; a refusal (no such point, a merge under way) is thrown and nothing is
   * recorded. `done` resolves with the recorded result and never rejects.
   */
  async start(
    vmId: string,
    opts: { pointId?: string; trigger: DrillTrigger; caller?: Caller; timeoutSeconds?: number },
  ): Promise<{ drillId: string; pointId: string; testId?: string; done: Promise<DrillReport> }> {
    const { policyName, verification: configured } = this.deps.verificationOf(vmId);
    if (!configured) throw new VerificationNotConfiguredError(vmId, policyName);
    // An operator may give one drill more (or less) time than the policy's timeout.
    const verification = opts.timeoutSeconds ? { ...configured, timeoutSeconds: opts.timeoutSeconds } : configured;
    const busy = this.running.get(vmId);
    if (busy) throw new DrillRunningError(vmId, busy.drillId, busy.pointId);
    if (this.stopped) throw new DrillsStoppedError(vmId);
    const startedAt = this.now();
    const drillId = `d${startedAt.toString(36)}`;
    // Reserved before the first await: two callers at once get one drill and one refusal.
    // Settled once the drill has ended, or failed to start: what stop() waits for.
    let settle!: (p: Promise<unknown>) => void;
    const entry: Running = { drillId, pointId: opts.pointId ?? "(newest)", abort: new AbortController(), ended: new Promise<unknown>((r) => (settle = r)) };
    this.running.set(vmId, entry);
    let state: RelationshipState;
    let test: { testId: string } | { launchError: unknown };
    try {
      const guestAgentChannel = verification.checks.guestAgent === true || verification.checks.guestCommand !== undefined;
      // The point is chosen in the VM's turn (after any commit queued before it): "the newest" is the newest when the test starts.
      ({ state, test } = await this.deps.serialize(vmId, async () => {
        const current = (await loadRelationship(this.deps.store, vmId)).state;
        entry.pointId = choosePoint(current, opts.pointId);
        const started = await this.deps.failovers.startTest(vmId, entry.pointId, opts.caller, { guestAgentChannel }).catch((err: unknown) => {
          // A VM that cannot be launched from the point fails its drill; anything else is a refusal.
          if (err instanceof VmLaunchError) return { launchError: err };
          throw err;
        });
        return { state: current, test: started };
      }));
    } catch (err) {
      this.running.delete(vmId);
      settle(Promise.resolve());
      this.deps.logger.warn({ vm: vmId, drillId, err: errorMessage(err) }, "verification drill not started");
      throw err;
    }
    const done = this.finish(vmId, state, entry, startedAt, verification, opts, test).finally(() => this.running.delete(vmId));
    settle(done);
    return { drillId, pointId: entry.pointId, ...("testId" in test ? { testId: test.testId } : {}), done };
  }

  /** Cancels every drill and waits until their test VMs are stopped (the site stops). */
  async stop(): Promise<void> {
    this.stopped = true;
    const all = [...this.running.values()];
    for (const r of all) r.abort.abort("the site is stopping");
    await Promise.all(all.map((r) => r.ended.catch(() => undefined)));
  }

  private now(): number {
    return (this.deps.clock ?? Date.now)();
  }

  private async finish(
    vmId: string,
    state: RelationshipState,
    entry: Running,
    startedAt: number,
    v: VerificationPolicy,
    opts: { trigger: DrillTrigger; caller?: Caller },
    test: { testId: string } | { launchError: unknown },
  ): Promise<DrillReport> {
    const { drillId, pointId } = entry;
    const log = this.deps.logger.child({ vm: vmId, drillId, point: pointId });
    const testId = "testId" in test ? test.testId : undefined;
    let outcome: { checks: DrillCheckOutcome[]; failed?: DrillCheckOutcome };
    try {
      if (testId === undefined) throw (test as { launchError: unknown }).launchError;
      const vm = this.deps.failovers.testVm(vmId, testId);
      if (!vm) throw new Error(`the test VM of ${testId} is gone`);
      const target = siteVmTarget(
        vm,
        () => launchSpecOf(state).nics,
        () => this.deps.failovers.isRunning(vm),
      );
      try {
        const deadline = startedAt + v.timeoutSeconds * 1000;
        outcome = await runChecks(v.checks, { target, deadline, startedAt, signal: entry.abort.signal, clock: () => this.now() });
      } finally {
        target.close();
      }
    } catch (err) {
      const failed: DrillCheckOutcome = { check: "running", passed: false, atMs: Math.round(this.now() - startedAt), detail: errorMessage(err) };
      outcome = { checks: [failed], failed };
    }
    const report: DrillReport = {
      drillId,
      pointId,
      trigger: opts.trigger,
      result: outcome.failed ? "failed" : "verified",
      ...(outcome.failed ? { failedCheck: outcome.failed.check, message: outcome.failed.detail ?? "" } : { timeToVerifiedMs: outcome.checks.at(-1)?.atMs ?? 0 }),
      checks: outcome.checks,
      finishedAt: new Date(this.now()).toISOString(),
    };
    try {
      // Recorded before the test stops: until then the test holds the point, so it still exists.
      await executeCommand(
        this.deps.store,
        vmId,
        (s) => recordVerificationDrill(s, { ...report, ...(testId !== undefined ? { testId } : {}), startedAt: new Date(startedAt).toISOString() }),
        opts.caller ? { metadata: actorMetadata(opts.caller) } : {},
      );
    } catch (err) {
      log.error({ err: errorMessage(err) }, "the drill's result could not be recorded");
    } finally {
      if (testId !== undefined)
        await this.deps.failovers.stopTests(vmId, testId, opts.caller).catch((err: unknown) => log.error({ err: errorMessage(err) }, "stopping the drill's test VM failed"));
    }
    const level = report.result === "verified" ? "info" : "warn";
    log[level](
      { result: report.result, failedCheck: report.failedCheck, timeToVerifiedMs: report.timeToVerifiedMs, message: report.message },
      `verification drill ${report.result}`,
    );
    return report;
  }
}

/** The point a drill boots: the one named, or the newest that can be opened. */
function choosePoint(state: RelationshipState, pointId: string | undefined): string {
  const open = state.points.filter((p) => !p.merging);
  const ids = open.map((p) => p.pointId);
  if (pointId === undefined) {
    const newest = open.at(-1);
    if (!newest) throw new RecoveryPointUnavailableError(state.vmId, undefined, "none", ids);
    return newest.pointId;
  }
  const p = state.points.find((x) => x.pointId === pointId);
  if (!p) throw new RecoveryPointUnavailableError(state.vmId, pointId, "unknown", ids);
  if (p.merging) throw new RecoveryPointUnavailableError(state.vmId, pointId, "merging", ids);
  return pointId;
}
