import { mkdirSync } from "node:fs";
import { silentLogger, type Logger } from "../../src/common/logger.js";
import { NbdClient } from "../../src/qemu/nbd/index.js";
import { QmpCommandError, findBlockNode, namedBitmaps, queryNamedBlockNodes, type QmpClient } from "../../src/qemu/qmp/index.js";
import { CaptureCycle, DiskCycle, type Consistency, type CycleKind } from "./captureCycle.js";
import { CaptureStateFile, type VmCaptureState } from "./captureState.js";
import { CaptureNotEnabledError, CycleInProgressError, DiskResizedDuringCutoffError, ResyncRequiredError } from "./errors.js";
import { allocationRanges, dirtyRanges, type ExtentReadOptions } from "./extentReader.js";
import { addFleeceExport, addFleeceNode, fleeceBackupAction, fleeceImagePath, removeLeftovers, teardownFleece } from "./fleece.js";
import { BASE_ALLOCATION, bitmapName, dirtyBitmapContext, exportName, parseBitmapSeq } from "./naming.js";
import { reconcileDisks, type DiskReport } from "./reconcile.js";

export interface CaptureDiskConfig {
  /** Stable id of the disk within the VM (e.g. "vda"). */
  id: string;
  /** QEMU block node name of the disk's qcow2 format node. */
  node: string;
}

/** Brackets the cut-off with a guest filesystem freeze (qemu-guest-agent). */
export interface Quiescer {
  withFrozenFilesystems<T>(
    fn: () => Promise<T>,
    opts: { freezeTimeoutMs: number; logger?: Logger },
  ): Promise<{ result: T; consistency: Consistency; freezeError?: Error }>;
}

export interface VmCaptureOptions {
  vmId: string;
  qmp: QmpClient;
  disks: CaptureDiskConfig[];
  /** Where the agent keeps its per-VM state file and (by default) the fleece scratch images. */
  stateDir: string;
  fleeceDir?: string;
  /** Unix socket of QEMU's NBD server; started there when QEMU has none running. */
  nbdSocketPath: string;
  quiescer?: Quiescer;
  freezeTimeoutMs?: number;
  read?: ExtentReadOptions & { connections?: number };
  logger?: Logger;
}

/** Read connections per disk when the export allows several (measured best with capture-read). */
const DEFAULT_CONNECTIONS = 4;

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
  private readonly fleeceDir: string;

  private constructor(private readonly opts: VmCaptureOptions) {
    this.logger = (opts.logger ?? silentLogger).child({ vm: opts.vmId });
    this.fleeceDir = opts.fleeceDir ?? opts.stateDir;
    mkdirSync(this.fleeceDir, { recursive: true });
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
    const removedLeftovers = await removeLeftovers(qmp, this.logger);
    if (removedLeftovers.length) this.logger.warn({ removed: removedLeftovers }, "removed leftovers of an earlier run");
    for (const d of disks) await teardownFleece(qmp, d.id, fleeceImagePath(this.fleeceDir, vmId, d.id), this.logger);
    const { disks: reports, mergedBitmaps } = await reconcileDisks(qmp, this.state, disks, this.logger);
    this.stateFile.save(this.state);
    const status: VmCaptureStatus = reports.some((r) => r.status === "resync-required")
      ? "resync-required"
      : reports.every((r) => r.status === "ok")
        ? "ok"
        : "not-enabled";
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
    const sizes = new Map<string, number>();
    const images = new Map<string, string>();
    try {
      for (const d of disks) {
        const node = await findBlockNode(qmp, d.node);
        const size = node?.image["virtual-size"] ?? 0;
        sizes.set(d.id, size);
        const imagePath = fleeceImagePath(this.fleeceDir, vmId, d.id);
        images.set(d.id, imagePath);
        await addFleeceNode(qmp, { diskId: d.id, diskNode: d.node, imagePath, sizeBytes: size });
      }
    } catch (err) {
      await this.teardownAll(images);
      throw err;
    }

    const actions = disks.flatMap((d) => [
      { type: "block-dirty-bitmap-add", data: { node: d.node, name: bitmapName(seq), persistent: true } },
      ...(kind === "incremental" ? [{ type: "block-dirty-bitmap-disable", data: { node: d.node, name: bitmapName(seq - 1) } }] : []),
      fleeceBackupAction(d.id, d.node),
    ]);
    let consistency: Consistency = "crash";
    let cutoffAt: Date;
    try {
      const runTransaction = async () => {
        await qmp.execute("transaction", { actions });
        return new Date();
      };
      if (this.opts.quiescer) {
        const frozen = await this.opts.quiescer.withFrozenFilesystems(runTransaction, {
          freezeTimeoutMs: this.opts.freezeTimeoutMs ?? 5_000,
          logger: this.logger,
        });
        cutoffAt = frozen.result;
        consistency = frozen.consistency;
      } else {
        cutoffAt = await runTransaction();
      }
    } catch (err) {
      // The transaction is atomic: on failure no bitmap changed, only the fleece nodes must go.
      await this.teardownAll(images);
      throw err;
    }

    if (kind === "incremental") {
      for (const d of disks) this.state.disks[d.id] = { ...this.state.disks[d.id]!, seq };
      this.stateFile.save(this.state);
    }

    const diskCycles: DiskCycle[] = [];
    const cycle = new CaptureCycle(vmId, seq, kind, cutoffAt, consistency, diskCycles, qmp, this.logger, (outcome) =>
      this.finishCycle(cycle, outcome),
    );
    this.openCycle = cycle;
    try {
      const nodes = await queryNamedBlockNodes(qmp);
      for (const d of disks) {
        const node = nodes.find((n) => n["node-name"] === d.node);
        const size = node?.image["virtual-size"] ?? 0;
        if (size !== sizes.get(d.id)) throw new DiskResizedDuringCutoffError(d.id, sizes.get(d.id) ?? 0, size);
        const handedOff = kind === "incremental" ? bitmapName(seq - 1) : undefined;
        const dirtyBytes = handedOff ? (node?.["dirty-bitmaps"]?.find((b) => b.name === handedOff)?.count ?? 0) : size;
        const name = exportName(d.id, seq);
        await addFleeceExport(qmp, { diskId: d.id, name, bitmap: handedOff ? { node: d.node, name: handedOff } : undefined });
        const context = handedOff ? dirtyBitmapContext(handedOff) : BASE_ALLOCATION;
        const clients: NbdClient[] = [];
        diskCycles.push(
          new DiskCycle(d.id, d.node, size, dirtyBytes, images.get(d.id)!, clients, (c) =>
            handedOff ? dirtyRanges(c, context) : allocationRanges(c, context),
          this.opts.read ?? {}),
        );
        const connect = () => NbdClient.connect({ socketPath: this.opts.nbdSocketPath, exportName: name, metaContexts: [context] });
        clients.push(await connect());
        // Several connections only where QEMU says they see one consistent export (read-only ones do).
        const connections = clients[0]!.canMultiConn ? Math.max(1, this.opts.read?.connections ?? DEFAULT_CONNECTIONS) : 1;
        for (let i = 1; i < connections; i++) clients.push(await connect());
      }
    } catch (err) {
      for (const d of disks) {
        if (!diskCycles.some((c) => c.diskId === d.id)) {
          diskCycles.push(new DiskCycle(d.id, d.node, 0, 0, images.get(d.id)!, [], () => emptyRanges(), {}));
        }
      }
      await cycle.abort(err).catch((e: unknown) => this.logger.error({ err: e }, "rollback after a failed cut-off failed"));
      throw err;
    }
    this.logger.info(
      { seq, kind, consistency, disks: diskCycles.map((d) => ({ disk: d.diskId, size: d.sizeAtCutoff, dirty: d.dirtyBytes })) },
      "cut-off taken",
    );
    return cycle;
  }

  private finishCycle(cycle: CaptureCycle, outcome: "confirmed" | "aborted"): void {
    if (this.openCycle === cycle) this.openCycle = undefined;
    for (const d of cycle.disks) {
      const prev = this.state.disks[d.diskId];
      if (!prev) continue;
      if (cycle.kind === "full") {
        this.state.disks[d.diskId] = outcome === "confirmed"
          ? { ...prev, enabled: true, seq: cycle.seq, sizeAtCutoff: d.sizeAtCutoff, lastCutoffAt: cycle.cutoffAt.toISOString() }
          : { ...prev, enabled: false };
      } else if (outcome === "confirmed") {
        this.state.disks[d.diskId] = { ...prev, sizeAtCutoff: d.sizeAtCutoff, lastCutoffAt: cycle.cutoffAt.toISOString() };
      }
    }
    this.stateFile.save(this.state);
  }

  private async teardownAll(images: Map<string, string>): Promise<void> {
    for (const d of this.opts.disks) {
      await teardownFleece(this.opts.qmp, d.id, images.get(d.id), this.logger).catch((err: unknown) =>
        this.logger.error({ err, disk: d.id }, "fleece teardown failed"),
      );
    }
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
