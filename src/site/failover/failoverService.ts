import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync, type Dirent } from "node:fs";
import { join, resolve } from "node:path";
import { imageInfo } from "../../qemu/processes/qemuImg.js";
import { QreplicaError } from "../../common/errors.js";
import { faultPoint } from "../../common/faultPoints.js";
import type { Logger } from "../../common/logger.js";
import {
  cancelFailover,
  completeFailover,
  executeCommand,
  failover,
  loadRelationship,
  recordTestFailoverRunning,
  startTestFailover,
  stopTestFailover,
  type EventStore,
  type FailoverKind,
  type RecoveryPoint,
} from "../../ledger/index.js";
import { createThrowawayOverlay, launchVm, type LaunchedVm } from "../launcher/index.js";
import { launchSpecOf } from "./defaultSpec.js";
import { actorMetadata, type Caller } from "../controlPlane/caller.js";

/** The ledger metadata of a command: who asked for it (none for the site's own housekeeping). */
const by = (caller: Caller | undefined) => (caller ? { metadata: actorMetadata(caller) } : {});
import { killQemuUnder, processCommandLine, terminate } from "./processes.js";
import { ReverseAgents, type ReverseAgentInfo, type ReverseAgentOptions } from "./reverseAgent.js";

export interface LaunchedInfo {
  name: string;
  qmpSocket: string;
  serialLog: string;
  pid: number;
  timeToRunningMs: number;
  diskImages: string[];
}

/** A request the relationship or the site cannot honour now; the message says why and what to do. */
export class FailoverRefusedError extends QreplicaError {
  readonly code = "FAILOVER_REFUSED" as const;
}

interface Running {
  vm: LaunchedVm;
  overlays: string[];
}

/**
 * A failover VM: production after a failover, so it must outlive the site process. Recorded in
 * `vm.json` beside its overlays, so that a restarted site adopts it instead of losing track of it.
 */
interface FailoverVm {
  name: string;
  pid: number;
  qmpSocketPath: string;
  serialLogPath: string;
  overlays: string[];
  /** Present while this process launched it and still holds its monitor. */
  launched?: LaunchedVm;
  /** Its monitor was handed to a reverse-replication agent (QEMU serves one client per monitor). */
  released: boolean;
}

const VM_RECORD = "vm.json";

/**
 * Test failovers and failovers on this (replica) site: overlays on recovery points, VMs launched
 * from the replicated spec, every step recorded in the ledger. Overlays are the only thing the
 * VMs write: recovery points stay immutable (invariant 4).
 */
export class FailoverService {
  private readonly tests = new Map<string, Running>();
  private readonly failedOver = new Map<string, FailoverVm>();
  readonly reverseAgents: ReverseAgents;

  constructor(
    private readonly store: EventStore,
    private readonly runDir: string,
    private readonly accel: "auto" | "kvm" | "tcg",
    private readonly logger: Logger,
  ) {
    this.reverseAgents = new ReverseAgents(runDir, logger);
  }

  async startTest(
    vmId: string,
    pointId: string | undefined,
    caller?: Caller,
    opts: { guestAgentChannel?: boolean } = {},
  ): Promise<{ testId: string; pointId: string; vm: LaunchedInfo }> {
    const started = performance.now();
    const testId = `t${Date.now().toString(36)}`;
    const { newState } = await executeCommand(this.store, vmId, (s) => startTestFailover(s, { testId, pointId, startedAt: new Date().toISOString() }), by(caller));
    const test = newState.testFailovers[testId];
    const point = newState.points.find((p) => p.pointId === test?.pointId);
    if (!test || !point) throw new FailoverRefusedError(`VM ${vmId}: test ${testId} was not recorded`);
    const dir = join(this.runDir, "tests", vmId, testId);
    try {
      // A test VM never outlives the site, even a kill -9 of it (recover() closes the test in the ledger).
      const running = await this.launchOn(point, newState, dir, `test-${vmId}-${testId}`, "dies-with-site", { guestAgentChannel: opts.guestAgentChannel === true });
      this.tests.set(`${vmId}/${testId}`, running);
      const timeToRunningMs = Math.round(performance.now() - started);
      await executeCommand(this.store, vmId, (s) => recordTestFailoverRunning(s, { testId, runningAt: running.vm.runningAt.toISOString(), timeToRunningMs }), by(caller));
      this.logger.info({ vm: vmId, testId, point: point.pointId, timeToRunningMs }, "test failover running");
      return { testId, pointId: point.pointId, vm: info(running, timeToRunningMs) };
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      await executeCommand(this.store, vmId, (s) => stopTestFailover(s, { testId, stoppedAt: new Date().toISOString() }), by(caller)).catch(() => undefined);
      throw err;
    }
  }

  /** A running test failover's VM (a verification drill checks it); undefined once stopped. */
  testVm(vmId: string, testId: string): LaunchedVm | undefined {
    return this.tests.get(`${vmId}/${testId}`)?.vm;
  }

  /** `powerdownGraceMs`: how long the guest may take to power off before QEMU quits (default 2 s; its writes are discarded either way). */
  async stopTests(vmId: string, testId: string | undefined, caller?: Caller, opts: { powerdownGraceMs?: number } = {}): Promise<string[]> {
    const { state } = await loadRelationship(this.store, vmId);
    const ids = testId ? [testId] : Object.keys(state.testFailovers);
    if (testId && !state.testFailovers[testId]) {
      throw new FailoverRefusedError(`VM ${vmId} has no test failover '${testId}' (running: ${Object.keys(state.testFailovers).join(", ") || "none"})`);
    }
    for (const id of ids) {
      const running = this.tests.get(`${vmId}/${id}`);
      await running?.vm.stop({ timeoutMs: opts.powerdownGraceMs ?? 2_000 });
      this.tests.delete(`${vmId}/${id}`);
      // Everything the test VM wrote is discarded with its overlays.
      rmSync(join(this.runDir, "tests", vmId, id), { recursive: true, force: true });
      await executeCommand(this.store, vmId, (s) => stopTestFailover(s, { testId: id, stoppedAt: new Date().toISOString() }), by(caller));
    }
    return ids;
  }

  async failover(
    vmId: string,
    kind: FailoverKind,
    pointId: string | undefined,
    startVm: boolean,
    caller?: Caller,
  ): Promise<{ pointId: string; generation: number; vm?: LaunchedInfo }> {
    const started = performance.now();
    const { newState } = await executeCommand(this.store, vmId, (s) => failover(s, { kind, pointId, startVm }), by(caller));
    const chosen = newState.failover?.pointId;
    const point = newState.points.find((p) => p.pointId === chosen);
    if (!point) throw new FailoverRefusedError(`VM ${vmId}: failover recorded without a point`);
    if (!startVm) return { pointId: point.pointId, generation: newState.generation };
    const dir = join(this.runDir, "failover", vmId, `g${newState.generation}`);
    // Said before the launch: a site killed while launching starts the VM again when it restarts.
    writeLaunchIntent(dir, point.pointId);
    // Production from here on: it outlives the site (which adopts it again when it restarts).
    const running = await this.launchOn(point, newState, dir, vmId, "outlives-site");
    faultPoint("crash-mid-failover-launch");
    this.remember(vmId, dir, running);
    const rto = Math.round(performance.now() - started);
    this.logger.info({ vm: vmId, point: point.pointId, generation: newState.generation, rtoMs: rto }, "failed over: VM running");
    return { pointId: point.pointId, generation: newState.generation, vm: info(running, rto) };
  }

  private remember(vmId: string, dir: string, running: Running): void {
    const vm: FailoverVm = {
      name: running.vm.name,
      pid: running.vm.proc.pid,
      qmpSocketPath: running.vm.qmpSocketPath,
      serialLogPath: running.vm.serialLogPath,
      overlays: running.overlays,
      launched: running.vm,
      released: false,
    };
    this.failedOver.set(vmId, vm);
    writeVmRecord(dir, vm);
  }

  /**
   * Hands the failed-over VM's monitor to a reverse-replication agent (QEMU serves one client per
   * monitor): the site keeps no connection to it from here on.
   */
  async releaseFailedOverVm(vmId: string): Promise<{ qmpSocket: string }> {
    const vm = this.failedOver.get(vmId);
    if (!vm) throw new FailoverRefusedError(`VM ${vmId} has no failed-over VM running on this site: fail it over (with its VM started) first`);
    await vm.launched?.qmp.close();
    vm.released = true;
    writeVmRecord(this.failoverDirOf(vmId), vm);
    return { qmpSocket: vm.qmpSocketPath };
  }

  /** Starts the VM's reverse-replication agent, supervised by this site (see ReverseAgents). */
  startReverseAgent(opts: ReverseAgentOptions): ReverseAgentInfo {
    return this.reverseAgents.start(opts);
  }

  async cancel(vmId: string, caller?: Caller): Promise<string> {
    const vm = this.failedOver.get(vmId);
    if (vm?.launched && !vm.released) await vm.launched.stop({ timeoutMs: 5_000 });
    else if (vm) await terminate(vm.pid, 10_000);
    this.failedOver.delete(vmId);
    rmSync(join(this.runDir, "failover", vmId), { recursive: true, force: true });
    const { newState } = await executeCommand(this.store, vmId, (s) => cancelFailover(s), by(caller));
    return newState.state;
  }

  async complete(vmId: string, caller?: Caller): Promise<string[]> {
    const { events } = await executeCommand(this.store, vmId, (s) => completeFailover(s, { now: new Date().toISOString() }), by(caller));
    const done = events.find((e) => e.type === "FailoverCompleted");
    if (!done || done.type !== "FailoverCompleted") return [];
    // Points after the failed-over one are no longer anybody's backing file.
    for (const img of done.data.releasedImages) rmSync(img.imagePath, { force: true });
    return done.data.droppedPointIds;
  }

  /** Test VMs do not survive the site process: stop them and record it. */
  async stopAllTests(): Promise<void> {
    for (const key of [...this.tests.keys()]) {
      const [vmId, testId] = key.split("/") as [string, string];
      await this.stopTests(vmId, testId).catch((err: unknown) => this.logger.error({ err, vm: vmId, testId }, "stopping a test failover failed"));
    }
  }

  /** The site stops: failover VMs and reverse agents run on, to be adopted by the next start. */
  detach(): void {
    this.reverseAgents.detach();
  }

  /**
   * After a restart: tests the ledger still lists have lost their VM (test VMs never outlive the
   * site); close them. Failover VMs still running are adopted, and their reverse agents adopted or
   * restarted: a site restart must never stop production or its replication.
   */
  async recover(vmIds: Iterable<string>): Promise<void> {
    killRecordedVms(join(this.runDir, "tests"));
    for (const vmId of vmIds) {
      const { state } = await loadRelationship(this.store, vmId);
      const found = this.adoptFailoverVm(vmId);
      if (found !== "adopted" && state.state === "failed-over-waiting-completion") {
        await this.relaunchFailoverVm(vmId, state, found === "died-after-release").catch((err: unknown) =>
          this.logger.error({ vm: vmId, err }, "the failover VM could not be started again: start it with 'qreplica failover VM cancel' and a new failover"),
        );
      }
      for (const testId of Object.keys(state.testFailovers)) {
        rmSync(join(this.runDir, "tests", vmId, testId), { recursive: true, force: true });
        await executeCommand(this.store, vmId, (s) => stopTestFailover(s, { testId, stoppedAt: new Date().toISOString() }));
        this.logger.warn({ vm: vmId, testId }, "test failover closed: its VM did not survive the site restart");
      }
    }
  }

  private failoverDirOf(vmId: string): string {
    const root = join(this.runDir, "failover", vmId);
    const generations = safeReaddir(root)
      .filter((n) => /^g\d+$/.test(n))
      .sort((a, b) => Number(b.slice(1)) - Number(a.slice(1)));
    return join(root, generations[0] ?? "g0");
  }

  private adoptFailoverVm(vmId: string): "adopted" | "none" | "died" | "died-after-release" {
    const dir = this.failoverDirOf(vmId);
    const vm = readVmRecord(dir);
    if (!vm) return "none";
    // A recycled pid must not be taken for the VM: it must be QEMU with this VM's monitor.
    const cmdline = processCommandLine(vm.pid);
    if (!cmdline?.includes("qemu-system") || !cmdline.includes(vm.qmpSocketPath)) {
      this.logger.warn({ vm: vmId, pid: vm.pid, dir }, "the failover VM is no longer running; its overlays are kept");
      rmSync(join(dir, VM_RECORD), { force: true }); // said once, not at every start
      return vm.released ? "died-after-release" : "died";
    }
    this.failedOver.set(vmId, vm);
    this.logger.info({ vm: vmId, pid: vm.pid, qmpSocket: vm.qmpSocketPath, serialLog: vm.serialLogPath }, "failover VM adopted: it ran on through the site restart");
    if (vm.released) this.reverseAgents.adoptOrRestart(vmId);
    return "adopted";
  }

  /**
   * A failover that was to start its VM, with no VM running after a restart: the site was killed
   * while launching it, or the VM died. It is production: started again on its own overlays
   * (which hold whatever it wrote), after any QEMU left over from the interrupted launch is gone.
   * A VM whose monitor a reverse agent held is that agent's to restart, not this.
   */
  private async relaunchFailoverVm(vmId: string, state: Awaited<ReturnType<typeof loadRelationship>>["state"], released: boolean): Promise<void> {
    const dir = join(this.runDir, "failover", vmId, `g${state.generation}`);
    // The ledger says whether a VM was to run (histories before it said so: the launch intent file).
    const toRun = state.failover?.startVm ?? readLaunchIntent(dir) !== undefined;
    const point = state.points.find((p) => p.pointId === state.failover?.pointId);
    if (!toRun || !point || released) return;
    await killQemuUnder(dir);
    const running = await this.launchOn(point, state, dir, vmId, "outlives-site", { reuseOverlays: true });
    this.remember(vmId, dir, running);
    this.logger.warn(
      { vm: vmId, point: point.pointId, generation: state.generation, pid: running.vm.proc.pid, serialLog: running.vm.serialLogPath },
      "the failover VM was not running after the site restart (the site stopped while launching it, or the VM died): started again on its overlays",
    );
  }

  private async launchOn(
    point: RecoveryPoint,
    state: { vmId: string; disks: readonly { diskId: string }[] } & Parameters<typeof launchSpecOf>[0],
    dir: string,
    name: string,
    lifetime: "dies-with-site" | "outlives-site",
    opts: { reuseOverlays?: boolean; guestAgentChannel?: boolean } = {},
  ): Promise<Running> {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const overlays: string[] = [];
    const diskImages: Record<string, string> = {};
    for (const d of point.disks) {
      const path = join(dir, `${d.diskId}.qcow2`);
      // An overlay the VM may have written to is kept; one cut short while being created is not.
      if (!(opts.reuseOverlays && (await overlayOn(path, d.imagePath)))) {
        rmSync(path, { force: true });
        await createThrowawayOverlay(d.imagePath, path);
      }
      overlays.push(path);
      diskImages[d.diskId] = path;
    }
    const vm = await launchVm({
      spec: launchSpecOf(state),
      diskImages,
      runDir: dir,
      name,
      network: "isolated",
      logger: this.logger,
      accel: this.accel,
      ...(lifetime === "outlives-site" ? { ownSession: true } : { dieWithOwner: true }),
      ...(opts.guestAgentChannel ? { guestAgentChannel: true } : {}),
    });
    writeFileSync(join(dir, "qemu.pid"), String(vm.proc.pid), { mode: 0o600 });
    return { vm, overlays };
  }
}

function info(r: Running, timeToRunningMs: number): LaunchedInfo {
  return { name: r.vm.name, qmpSocket: r.vm.qmpSocketPath, serialLog: r.vm.serialLogPath, pid: r.vm.proc.pid, timeToRunningMs, diskImages: r.overlays };
}

const LAUNCH_INTENT = "launch.json";

function writeLaunchIntent(dir: string, pointId: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, LAUNCH_INTENT), JSON.stringify({ pointId, at: new Date().toISOString() }), { mode: 0o600 });
}

function readLaunchIntent(dir: string): { pointId: string } | undefined {
  try {
    const r = JSON.parse(readFileSync(join(dir, LAUNCH_INTENT), "utf8")) as { pointId?: unknown };
    return typeof r.pointId === "string" ? { pointId: r.pointId } : undefined;
  } catch {
    return undefined;
  }
}

/** Whether `path` is a whole qcow2 overlay on `pointImage`. */
async function overlayOn(path: string, pointImage: string): Promise<boolean> {
  if (!existsSync(path)) return false;
  try {
    const info = await imageInfo(path);
    return info.format === "qcow2" && resolve(info["backing-filename"] ?? "") === resolve(pointImage);
  } catch {
    return false;
  }
}

function writeVmRecord(dir: string, vm: FailoverVm): void {
  const { launched: _launched, ...record } = vm;
  writeFileSync(join(dir, VM_RECORD), JSON.stringify(record, null, 2), { mode: 0o600 });
}

function readVmRecord(dir: string): FailoverVm | undefined {
  const path = join(dir, VM_RECORD);
  if (!existsSync(path)) return undefined;
  try {
    const r = JSON.parse(readFileSync(path, "utf8")) as Partial<FailoverVm>;
    if (typeof r.pid !== "number" || typeof r.qmpSocketPath !== "string" || typeof r.name !== "string") return undefined;
    return { name: r.name, pid: r.pid, qmpSocketPath: r.qmpSocketPath, serialLogPath: r.serialLogPath ?? "", overlays: r.overlays ?? [], released: r.released === true };
  } catch {
    return undefined;
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** QEMU and reverse-agent processes recorded in `qemu.pid` / `agent.pid` files under `dir` (test clean-up, test VMs of a site that is gone). */
export function killRecordedVms(dir: string): void {
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory()) {
      killRecordedVms(path);
    } else if (e.name === "qemu.pid" || e.name === "agent.pid") {
      try {
        process.kill(Number(readFileSync(path, "utf8")), "SIGKILL");
      } catch {
        // already gone
      }
    }
  }
}
