import { existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
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
import { createThrowawayOverlay, type LauncherKind, type SiteLaunchers, type SiteVm, type VmLifetime } from "../launcher/index.js";
import { launchSpecOf } from "./defaultSpec.js";
import { actorMetadata, type Caller } from "../controlPlane/caller.js";

/** The ledger metadata of a command: who asked for it (none for the site's own housekeeping). */
const by = (caller: Caller | undefined) => (caller ? { metadata: actorMetadata(caller) } : {});
import { killQemuUnder, killRecordedVms } from "./processes.js";
import { readLaunchIntent, readVmRecord, vmRecordPath, writeLaunchIntent, writeVmRecord, type FailoverVm } from "./failoverRecords.js";
import { ReverseAgents, type ReverseAgentInfo, type ReverseAgentOptions } from "./reverseAgent.js";

export interface LaunchedInfo {
  name: string;
  qmpSocket: string;
  serialLog: string;
  pid: number;
  timeToRunningMs: number;
  diskImages: string[];
  launcher: LauncherKind;
  /** libvirt only: the domain and the URI it is defined on. */
  libvirtDomain?: string;
  libvirtUri?: string;
}

/** A request the relationship or the site cannot honour now; the message says why and what to do. */
export class FailoverRefusedError extends QreplicaError {
  readonly code = "FAILOVER_REFUSED" as const;
}

interface Running {
  vm: SiteVm;
  overlays: string[];
}

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
    private readonly launchers: SiteLaunchers,
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
  testVm(vmId: string, testId: string): SiteVm | undefined {
    return this.tests.get(`${vmId}/${testId}`)?.vm;
  }

  /** Whether a VM this site launched still runs, as its launcher tells. */
  isRunning(vm: SiteVm): Promise<boolean> {
    return this.launchers.forRef(vm.ref).isRunning(vm.ref);
  }

  /** `powerdownGraceMs`: how long the guest may take to power off before it is stopped hard (default 2 s; its writes are discarded either way). */
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
      ref: running.vm.ref,
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
    this.assertReversible(vmId);
    const qmpSocket = vm.launched ? await vm.launched.releaseMonitor() : vm.ref.launcher === "qemu" ? vm.ref.qmpSocketPath : "";
    vm.released = true;
    writeVmRecord(this.failoverDirOf(vmId), vm);
    return { qmpSocket };
  }

  /**
   * Reverse replication reads the failed-over VM through its QEMU monitor: a libvirt domain's
   * monitor is libvirt's. Checked before anything is recorded, so a refused reverse changes nothing.
   */
  assertReversible(vmId: string): void {
    const ref = this.failedOver.get(vmId)?.ref;
    if (ref?.launcher === "libvirt") {
      throw new FailoverRefusedError(
        `VM ${vmId} runs as libvirt domain ${ref.domain} (site.json launcher "libvirt"): reverse replication from a libvirt-launched VM is not supported yet; ` +
          "protect the domain with an agent whose config names it (vms[].libvirt) and a new relationship, or use the qemu launcher for VMs to be reversed",
      );
    }
  }

  /** Starts the VM's reverse-replication agent, supervised by this site (see ReverseAgents). */
  startReverseAgent(opts: ReverseAgentOptions): ReverseAgentInfo {
    return this.reverseAgents.start(opts);
  }

  /**
   * The failover VM this site runs for `vmId`: whether its monitor went to an agent, and whether
   * that agent was since stopped for good (the monitor is free for the next one); undefined: none runs here.
   */
  failoverVmOf(vmId: string): { released: boolean; agentStopped: boolean } | undefined {
    const vm = this.failedOver.get(vmId);
    return vm ? { released: vm.released, agentStopped: vm.released && this.reverseAgents.stoppedForGood(vmId) } : undefined;
  }

  /** The pid of the failover VM's replication agent while this site supervises it. */
  replicationAgentPid(vmId: string): number | undefined {
    return this.reverseAgents.pidOf(vmId);
  }

  /** Ends the failover VM's replication agent for good (its monitor is free again for the next one). */
  stopReplicationAgent(vmId: string): Promise<void> {
    return this.reverseAgents.stop(vmId);
  }

  async cancel(vmId: string, caller?: Caller): Promise<string> {
    const vm = this.failedOver.get(vmId);
    if (vm?.launched && !vm.released) await vm.launched.stop({ timeoutMs: 5_000 });
    else if (vm) await this.launchers.forRef(vm.ref).stopRecorded(vm.ref, 10_000);
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
    const testsDir = join(this.runDir, "tests");
    killRecordedVms(testsDir);
    // An unreachable libvirt must not keep the site (and replication) from starting.
    const stray = await this.launchers.configured.removeTestLeftovers(testsDir).catch((err: unknown) => {
      this.logger.error({ err }, "cannot look for test VMs the site's previous run left (is libvirt reachable?); destroy qreplica-SITE-test-* domains by hand");
      return [];
    });
    if (stray.length > 0) this.logger.warn({ domains: stray }, "test VMs left by the site's previous run destroyed (test VMs never outlive the site)");
    for (const vmId of vmIds) {
      const { state } = await loadRelationship(this.store, vmId);
      const found = await this.adoptFailoverVm(vmId);
      if (found !== "adopted" && found !== "unknown" && state.state === "failed-over-waiting-completion") {
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

  private async adoptFailoverVm(vmId: string): Promise<"adopted" | "none" | "died" | "died-after-release" | "unknown"> {
    const dir = this.failoverDirOf(vmId);
    const vm = readVmRecord(dir);
    if (!vm) return "none";
    const running = await this.launchers
      .forRef(vm.ref)
      .isRunning(vm.ref)
      .catch((err: unknown) => {
        // Its record stays: a later start, with libvirt back, adopts it.
        this.logger.error({ vm: vmId, ref: vm.ref, err }, "cannot tell whether the failover VM runs (is libvirt reachable?); restart the site once it is");
        return undefined;
      });
    if (running === undefined) return "unknown";
    if (!running) {
      this.logger.warn({ vm: vmId, ref: vm.ref, dir }, "the failover VM is no longer running; its overlays are kept");
      rmSync(vmRecordPath(dir), { force: true }); // said once, not at every start
      return vm.released ? "died-after-release" : "died";
    }
    this.failedOver.set(vmId, vm);
    this.logger.info({ vm: vmId, ref: vm.ref, serialLog: vm.serialLogPath }, "failover VM adopted: it ran on through the site restart");
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
    // Whatever the interrupted launch left holds the overlays: a QEMU of the qemu launcher, a domain of libvirt's.
    await killQemuUnder(dir);
    await this.launchers.configured.removeLeftover(dir, vmId);
    const running = await this.launchOn(point, state, dir, vmId, "outlives-site", { reuseOverlays: true });
    this.remember(vmId, dir, running);
    this.logger.warn(
      { vm: vmId, point: point.pointId, generation: state.generation, ref: running.vm.ref, serialLog: running.vm.serialLogPath },
      "the failover VM was not running after the site restart (the site stopped while launching it, or the VM died): started again on its overlays",
    );
  }

  private async launchOn(
    point: RecoveryPoint,
    state: { vmId: string; disks: readonly { diskId: string }[] } & Parameters<typeof launchSpecOf>[0],
    dir: string,
    name: string,
    lifetime: VmLifetime,
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
    const request = {
      spec: launchSpecOf(state),
      diskImages,
      runDir: dir,
      name,
      network: "isolated" as const,
      lifetime,
      ...(opts.guestAgentChannel ? { guestAgentChannel: true } : {}),
    };
    const vm = await this.launchers.configured.launch(request, this.logger);
    return { vm, overlays };
  }
}

function info(r: Running, timeToRunningMs: number): LaunchedInfo {
  const ref = r.vm.ref;
  return {
    name: r.vm.name,
    qmpSocket: ref.launcher === "qemu" ? ref.qmpSocketPath : "",
    serialLog: r.vm.serialLogPath,
    pid: r.vm.pid,
    timeToRunningMs,
    diskImages: r.overlays,
    launcher: ref.launcher,
    ...(ref.launcher === "libvirt" ? { libvirtDomain: ref.domain, libvirtUri: ref.uri } : {}),
  };
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

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

export { killRecordedVms } from "./processes.js";
