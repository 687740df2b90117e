import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { silentLogger, type Logger } from "../../src/common/logger.js";
import { NbdClient } from "../../src/qemu/nbd/index.js";
import { NbdCommandError } from "../../src/qemu/nbd/index.js";
import { QmpCommandError, namedBitmaps, queryNamedBlockNodes, type QmpClient } from "../../src/qemu/qmp/index.js";
import { CaptureCycle, DiskCycle, qmpBitmapHandoff, type Consistency, type CycleKind } from "./captureCycle.js";
import { CaptureStateFile, type VmCaptureState } from "./captureState.js";
import { scratchFiles, takeCutoff, type CutoffDisk } from "./cutoff.js";
import type { GroupCutoff } from "./groupCutoff.js";
import { CaptureNotEnabledError, CycleInProgressError, DiskResizedDuringCutoffError, ResyncRequiredError, SnapshotBrokenError } from "./errors.js";
import { allocationRanges, dirtyRanges, type ExtentReadOptions } from "./extentReader.js";
import { addCutoffExport } from "./fleece.js";
import { BASE_ALLOCATION, bitmapName, dirtyBitmapContext, exportName, fleeceNodeName, parseBitmapSeq } from "./naming.js";
import { reconcileDisks, type DiskReport } from "./reconcile.js";
import { checkScratchSpace, DEFAULT_SCRATCH_MIN_FREE_BYTES, scratchFreeBytes } from "./scratchSpace.js";
import { addSnapshotAccess } from "./snapshotGraph.js";
import { removeLeftovers, teardownDisk } from "./teardown.js";

export interface CaptureDiskConfig {
  /** Stable id of the disk within the VM (e.g. "vda"). */
  id: string;
  /** QEMU block node name of the disk's qcow2 format node. */
  node: string;
}

/** Brackets the cut-off with a guest filesystem freeze (qemu-guest-agent). */
export interface Quiescer {
  withFrozenFilesystems<T>(fn: () => Promise<T>, opts: { freezeTimeoutMs: number; logger?: Logger }): Promise<{ result: T; consistency: Consistency; freezeError?: Error }>;
}

export interface VmCaptureOptions {
  vmId: string;
  qmp: QmpClient;
  disks: CaptureDiskConfig[];
  /** Where the agent keeps its per-VM state file. */
  stateDir: string;
  /**
   * Where cut-offs keep the old data the guest overwrites while a cycle is read (default
   * `<stateDir>/scratch`). Worst case it holds every changed block of a cycle the guest rewrites.
   */
  scratchDir?: string;
  /** A cut-off is refused (nothing cut, changes kept) while the scratch filesystem has less free. */
  scratchMinFreeBytes?: number;
  /** Longest a guest write waits for its copy into the scratch before the snapshot breaks instead. */
  cbwTimeoutSeconds?: number;
  /** Unix socket of QEMU's NBD server; started there when QEMU has none running. */
  nbdSocketPath: string;
  quiescer?: Quiescer;
  freezeTimeoutMs?: number;
  /**
   * Asked at each cut-off whether to freeze the guest this time and for how long at most
   * (undefined: a crash-consistent point). Absent: every cut-off freezes when there is a quiescer.
   */
  quiesceNow?: () => { freezeTimeoutMs: number } | undefined;
  read?: ExtentReadOptions & { connections?: number };
  /** The VM's consistency group: its cut-offs are taken together with the other members'. */
  group?: GroupCutoff;
  logger?: Logger;
}

/** Read connections per disk when the export allows several (measured best with capture-read). */
const DEFAULT_CONNECTIONS = 4;
/** A guest write may wait this long for its copy-before-write; then the snapshot breaks, not the write. */
export const DEFAULT_CBW_TIMEOUT_SECONDS = 5;

export type VmCaptureStatus = "ok" | "not-enabled" | "resync-required";

export interface ReconcileReport {
  vmId: string;
  status: VmCaptureStatus;
  disks: DiskReport[];
  removedLeftovers: string[];
  mergedBitmaps: string[];
}

/**
 * Changed-block capture for one VM: the initial full read, then cycles, each a point-in-time cut
 * across all of the VM's disks. See DESIGN.md, "One replication cycle".
 */
export class VmCapture {
  private readonly stateFile: CaptureStateFile;
  private state: VmCaptureState;
  private openCycle: CaptureCycle | undefined;
  private lastReport: ReconcileReport | undefined;
  private readonly logger: Logger;
  readonly scratchDir: string;

  private constructor(private readonly opts: VmCaptureOptions) {
    this.logger = (opts.logger ?? silentLogger).child({ vm: opts.vmId });
    this.scratchDir = opts.scratchDir ?? join(opts.stateDir, "scratch");
    mkdirSync(this.scratchDir, { recursive: true, mode: 0o700 });
    this.stateFile = new CaptureStateFile(opts.stateDir, opts.vmId);
    this.state = this.stateFile.load(opts.vmId);
  }

  /** Connects to what QEMU has, cleans up after earlier runs and reports whether cycles can go on. */
  static async open(opts: VmCaptureOptions): Promise<VmCapture> {
    const capture = new VmCapture(opts);
    await capture.ensureNbdServer();
    await capture.reconcile();
    return capture;
  }

  get vmId(): string {
    return this.opts.vmId;
  }

  get report(): ReconcileReport | undefined {
    return this.lastReport;
  }

  async reconcile(): Promise<ReconcileReport> {
    const { qmp, disks, vmId } = this.opts;
    await this.resumeIfPausedByUs();
    // Configured disks first: their drives go back onto the disk nodes they are known to belong to.
    const removedLeftovers: string[] = [];
    for (const d of disks) removedLeftovers.push(...(await this.teardownDisk(d.id, d.node)));
    removedLeftovers.push(...(await removeLeftovers(qmp, this.logger)));
    if (removedLeftovers.length) this.logger.warn({ removed: removedLeftovers }, "removed leftovers of an earlier run");
    const { disks: reports, mergedBitmaps } = await reconcileDisks(qmp, this.state, disks, this.logger);
    this.stateFile.save(this.state);
    const status: VmCaptureStatus = reports.some((r) => r.status === "resync-required") ? "resync-required" : reports.every((r) => r.status === "ok") ? "ok" : "not-enabled";
    this.lastReport = { vmId, status, disks: reports, removedLeftovers, mergedBitmaps };
    if (status === "resync-required") this.logger.error({ disks: reports }, "resync required");
    return this.lastReport;
  }

  /**
   * Starts tracking from scratch: new persistent bitmaps and a full point-in-time read that skips
   * holes and zeroes. Replaces any earlier tracking state; that is the caller's explicit decision.
   * `minSeq`: the replica's next cycle number, for an agent that lost its state (and so its count).
   */
  async enable(opts: { minSeq?: number } = {}): Promise<CaptureCycle> {
    this.assertNoOpenCycle();
    const { qmp, disks } = this.opts;
    const nodes = await queryNamedBlockNodes(qmp);
    let highest = 0;
    for (const d of disks) {
      highest = Math.max(highest, this.state.disks[d.id]?.seq ?? 0);
      const node = nodes.find((n) => n["node-name"] === d.node);
      for (const b of node ? namedBitmaps(node) : []) {
        const seq = parseBitmapSeq(b.name);
        if (seq === undefined) continue;
        highest = Math.max(highest, seq);
        await qmp.execute("block-dirty-bitmap-remove", { node: d.node, name: b.name });
      }
    }
    const seq = Math.max(highest + 1, opts.minSeq ?? 0);
    for (const d of disks) this.state.disks[d.id] = { node: d.node, enabled: false, seq };
    this.stateFile.save(this.state);
    return this.cutoff("full", seq);
  }

  /** Hands off the recording bitmaps at a new cut-off and opens their changes for reading. */
  async beginCycle(): Promise<CaptureCycle> {
    this.assertNoOpenCycle();
    const { qmp, disks, vmId } = this.opts;
    const nodes = await queryNamedBlockNodes(qmp);
    let seq: number | undefined;
    for (const d of disks) {
      const remembered = this.state.disks[d.id];
      if (!remembered?.enabled) throw new CaptureNotEnabledError(vmId);
      const name = bitmapName(remembered.seq);
      const bitmap = nodes.find((n) => n["node-name"] === d.node)?.["dirty-bitmaps"]?.find((b) => b.name === name);
      if (!bitmap) throw new ResyncRequiredError(vmId, d.id, `bitmap ${name} is missing`);
      if (bitmap.inconsistent) throw new ResyncRequiredError(vmId, d.id, `bitmap ${name} is inconsistent`);
      if (!bitmap.recording) throw new ResyncRequiredError(vmId, d.id, `bitmap ${name} is not recording`);
      seq = remembered.seq;
    }
    if (seq === undefined) throw new CaptureNotEnabledError(vmId);
    return this.cutoff("incremental", seq + 1);
  }

  private async cutoff(kind: CycleKind, seq: number): Promise<CaptureCycle> {
    const { qmp, disks, vmId } = this.opts;
    const { freeBytes } = checkScratchSpace(vmId, this.scratchDir, this.opts.scratchMinFreeBytes ?? DEFAULT_SCRATCH_MIN_FREE_BYTES);
    const taken = await takeCutoff({
      qmp,
      vmId,
      kind,
      seq,
      disks,
      scratchDir: this.scratchDir,
      cbwTimeoutSeconds: this.opts.cbwTimeoutSeconds ?? DEFAULT_CBW_TIMEOUT_SECONDS,
      freeze: (fn) => this.frozen(fn),
      pauseMarker: { set: () => this.markPause(true), clear: () => this.markPause(false) },
      ...(this.opts.group ? { group: this.opts.group } : {}),
      logger: this.logger,
    });

    if (kind === "incremental") {
      for (const d of disks) this.state.disks[d.id] = { ...this.state.disks[d.id]!, seq };
      this.stateFile.save(this.state);
    }

    const diskCycles: DiskCycle[] = [];
    const cycle = new CaptureCycle(
      vmId,
      seq,
      kind,
      taken.at,
      taken.consistency,
      diskCycles,
      qmpBitmapHandoff(qmp),
      this.logger,
      (outcome) => this.finishCycle(cycle, outcome),
      async (d) => void (await this.teardownDisk(d.diskId, d.node)),
      taken.vcpuPauseMs,
      taken.quiesceFailure,
      taken.group,
    );
    this.openCycle = cycle;
    try {
      const nodes = await queryNamedBlockNodes(qmp);
      for (const d of taken.disks) {
        const node = nodes.find((n) => n["node-name"] === d.node);
        const size = node?.image["virtual-size"] ?? 0;
        if (size !== d.sizeBytes) throw new DiskResizedDuringCutoffError(d.id, d.sizeBytes, size);
        const handedOff = kind === "incremental" ? bitmapName(seq - 1) : undefined;
        const dirtyBytes = handedOff ? (node?.["dirty-bitmaps"]?.find((b) => b.name === handedOff)?.count ?? 0) : size;
        diskCycles.push(await this.openDisk(d, seq, dirtyBytes, handedOff));
      }
    } catch (err) {
      for (const d of disks) {
        if (!diskCycles.some((c) => c.diskId === d.id)) diskCycles.push(new DiskCycle(d.id, d.node, 0, 0, [], () => emptyRanges(), {}));
      }
      await cycle.abort(err).catch((e: unknown) => this.logger.error({ err: e }, "rollback after a failed cut-off failed"));
      throw err;
    }
    const dirtyTotal = diskCycles.reduce((n, d) => n + d.dirtyBytes, 0);
    this.logger.info(
      {
        seq,
        kind,
        consistency: taken.consistency,
        quiesceFailure: taken.quiesceFailure,
        vcpuPauseMs: taken.vcpuPauseMs,
        ...(taken.group ? { group: taken.group.groupId, groupCutoffId: taken.group.cutoffId, groupPauseMs: taken.group.groupPauseMs, joined: taken.group.joined } : {}),
        graph: taken.disks.map((d) => `${d.id}:${d.device ? `copy-before-write${d.device.filter ? ` under throttle ${d.device.filter.node}` : ""}` : "backup-sync-none"}`),
        scratchFreeBytes: freeBytes,
        cbwTimeoutSeconds: taken.disks.some((d) => d.device) ? (this.opts.cbwTimeoutSeconds ?? DEFAULT_CBW_TIMEOUT_SECONDS) : undefined,
        disks: diskCycles.map((d) => ({ disk: d.diskId, size: d.sizeAtCutoff, dirty: d.dirtyBytes })),
      },
      "cut-off taken",
    );
    for (const d of taken.disks) {
      if (d.fallback)
        this.logger.warn(
          { disk: d.id, reason: d.fallback },
          "this disk's cut-off uses blockdev-backup sync=none, which is not guest-safe: a full scratch would fail the guest's writes",
        );
    }
    if (freeBytes < dirtyTotal && taken.disks.some((d) => d.device)) {
      this.logger.warn(
        { scratchDir: this.scratchDir, freeBytes, dirtyBytes: dirtyTotal },
        "the scratch may be too small if the guest rewrites much of this cycle's changes before they are read; the snapshot would then break (never the guest's writes)",
      );
    }
    return cycle;
  }

  /** Exports one disk's point-in-time view with the cycle's bitmap and connects the readers. */
  private async openDisk(d: CutoffDisk, seq: number, dirtyBytes: number, handedOff: string | undefined): Promise<DiskCycle> {
    const { qmp } = this.opts;
    const name = exportName(d.id, seq);
    const node = d.device ? await addSnapshotAccess(qmp, d.id) : fleeceNodeName(d.id);
    await addCutoffExport(qmp, { diskId: d.id, node, name, bitmap: handedOff ? { node: d.node, name: handedOff } : undefined });
    // A bitmap-restricted snapshot-access node refuses block status and reads outside the
    // bitmap (EINVAL): only the dirty-bitmap context is negotiated, zeroes are found in the data.
    const context = handedOff ? dirtyBitmapContext(handedOff) : BASE_ALLOCATION;
    const clients: NbdClient[] = [];
    const explain = (err: unknown) => (d.device ? this.explainSnapshotReadError(err, d.id, seq) : err);
    const cycle = new DiskCycle(
      d.id,
      d.node,
      d.sizeBytes,
      dirtyBytes,
      clients,
      (c) => (handedOff ? dirtyRanges(c, context) : allocationRanges(c, context)),
      this.opts.read ?? {},
      explain,
    );
    const connect = () => NbdClient.connect({ socketPath: this.opts.nbdSocketPath, exportName: name, metaContexts: [context] });
    clients.push(await connect());
    // Several connections only where QEMU says they see one consistent export (read-only ones do).
    const connections = clients[0]!.canMultiConn ? Math.max(1, this.opts.read?.connections ?? DEFAULT_CONNECTIONS) : 1;
    for (let i = 1; i < connections; i++) clients.push(await connect());
    return cycle;
  }

  /**
   * QEMU reports a broken snapshot only as failing reads (EINVAL: "Permission denied" inside), and
   * the cycle reads only inside its bitmap, where reads fail for no other reason.
   */
  private explainSnapshotReadError(err: unknown, diskId: string, seq: number): unknown {
    if (!(err instanceof NbdCommandError)) return err;
    let free: number | undefined;
    try {
      free = scratchFreeBytes(this.scratchDir);
    } catch {
      free = undefined;
    }
    const full = free !== undefined && free < 1024 * 1024;
    const cause = full
      ? `the scratch filesystem of ${this.scratchDir} filled up (${free} bytes free) while the guest overwrote blocks the cycle had not read yet`
      : `a copy of old data into the scratch ${this.scratchDir} failed or took longer than cbw-timeout (${this.opts.cbwTimeoutSeconds ?? DEFAULT_CBW_TIMEOUT_SECONDS} s); the export said: ${err.serverMessage || err.errnoName}`;
    return new SnapshotBrokenError(this.opts.vmId, diskId, seq, this.scratchDir, cause, { cause: err });
  }

  private async frozen<T>(fn: () => Promise<T>): Promise<{ result: T; consistency: Consistency; quiesceFailure?: string }> {
    const wanted = this.opts.quiesceNow ? this.opts.quiesceNow() : { freezeTimeoutMs: this.opts.freezeTimeoutMs ?? 5_000 };
    if (!this.opts.quiescer || !wanted) return { result: await fn(), consistency: "crash" };
    const frozen = await this.opts.quiescer.withFrozenFilesystems(fn, { freezeTimeoutMs: wanted.freezeTimeoutMs, logger: this.logger });
    if (!frozen.freezeError) return { result: frozen.result, consistency: frozen.consistency };
    return { result: frozen.result, consistency: frozen.consistency, quiesceFailure: frozen.freezeError.message };
  }

  private markPause(on: boolean): void {
    if (on) this.state.cutoffPauseStartedAt = new Date().toISOString();
    else delete this.state.cutoffPauseStartedAt;
    this.stateFile.save(this.state);
  }

  /** A previous agent died while it held the guest stopped for a cut-off: resume the guest. */
  private async resumeIfPausedByUs(): Promise<void> {
    if (!this.state.cutoffPauseStartedAt) return;
    const status = await this.opts.qmp.execute<{ status: string }>("query-status");
    if (status.status === "paused") {
      await this.opts.qmp.execute("cont");
      this.logger.warn({ pausedSince: this.state.cutoffPauseStartedAt }, "resumed the guest that an earlier run of the agent had paused for a cut-off and not resumed");
    }
    this.markPause(false);
  }

  private async teardownDisk(diskId: string, diskNode: string): Promise<string[]> {
    return teardownDisk(this.opts.qmp, { diskId, diskNode }, scratchFiles(this.scratchDir, this.opts.vmId, diskId), this.logger);
  }

  private finishCycle(cycle: CaptureCycle, outcome: "confirmed" | "aborted"): void {
    if (this.openCycle === cycle) this.openCycle = undefined;
    for (const d of cycle.disks) {
      const prev = this.state.disks[d.diskId];
      if (!prev) continue;
      if (cycle.kind === "full") {
        this.state.disks[d.diskId] =
          outcome === "confirmed"
            ? { ...prev, enabled: true, seq: cycle.seq, sizeAtCutoff: d.sizeAtCutoff, lastCutoffAt: cycle.cutoffAt.toISOString() }
            : { ...prev, enabled: false };
      } else if (outcome === "confirmed") {
        this.state.disks[d.diskId] = { ...prev, sizeAtCutoff: d.sizeAtCutoff, lastCutoffAt: cycle.cutoffAt.toISOString() };
      }
    }
    this.stateFile.save(this.state);
  }

  private async ensureNbdServer(): Promise<void> {
    try {
      await this.opts.qmp.execute("nbd-server-start", { addr: { type: "unix", data: { path: this.opts.nbdSocketPath } } });
    } catch (err) {
      // One NBD server per QEMU: an operator-started one is used at the configured path.
      if (!(err instanceof QmpCommandError && /already running/i.test(err.description))) throw err;
    }
  }

  private assertNoOpenCycle(): void {
    if (this.openCycle) throw new CycleInProgressError(this.opts.vmId, this.openCycle.seq);
  }
}

async function* emptyRanges(): AsyncGenerator<never> {}
