import type { Logger } from "../../src/common/logger.js";
import type { NbdClient } from "../../src/qemu/nbd/index.js";
import type { QmpClient } from "../../src/qemu/qmp/index.js";
import { CycleFinishedError } from "./errors.js";
import type { GroupCut } from "./groupCutoff.js";
import { readRanges, type ByteRange, type CaptureExtent, type ExtentReadOptions, type ExtentReadStats } from "./extentReader.js";
import { bitmapName } from "./naming.js";

export type CycleKind = "full" | "incremental";
export type Consistency = "application" | "crash";

/** One disk's share of a cycle: its size at the cut-off and the extents to ship. */
export class DiskCycle {
  readonly stats: ExtentReadStats = { extents: 0, dataBytes: 0, zeroBytes: 0, readRequests: 0 };

  constructor(
    readonly diskId: string,
    readonly node: string,
    readonly sizeAtCutoff: number,
    /** Bytes the cycle covers: the handed-off bitmap's count, or the disk size for a full read. */
    readonly dirtyBytes: number,
    readonly clients: NbdClient[],
    private readonly ranges: (client: NbdClient) => AsyncIterable<ByteRange>,
    private readonly readOptions: ExtentReadOptions,
    /** Turns a failed read into what it means (a broken snapshot); others pass unchanged. */
    readonly explainReadError: (err: unknown) => unknown = (err) => err,
  ) {}

  /** The cycle's extents in offset order; data is as it was at the cut-off. */
  async *extents(): AsyncGenerator<CaptureExtent> {
    const first = this.clients[0];
    if (!first) throw new Error(`disk ${this.diskId}: no NBD connection`);
    try {
      yield* readRanges(this.clients, this.ranges(first), this.readOptions, this.stats);
    } catch (err) {
      throw this.explainReadError(err);
    }
  }
}

/**
 * What confirming or aborting a cycle does to the change tracking it was cut from: QEMU's bitmaps
 * over QMP (`qmpBitmapHandoff`), or libvirt's checkpoints.
 */
export interface TrackingHandoff {
  /** The replica has the cycle: forget the changes it carried. */
  confirmed(cycle: CaptureCycle): Promise<void>;
  /** The cycle did not land: keep its changes for the next one. */
  aborted(cycle: CaptureCycle): Promise<void>;
}

/** QEMU's bitmaps: the handed-off one is removed, or merged back into the recording one. */
export function qmpBitmapHandoff(qmp: QmpClient): TrackingHandoff {
  return {
    async confirmed(cycle) {
      if (cycle.kind !== "incremental") return;
      for (const d of cycle.disks) await qmp.execute("block-dirty-bitmap-remove", { node: d.node, name: bitmapName(cycle.seq - 1) });
    },
    async aborted(cycle) {
      for (const d of cycle.disks) {
        if (cycle.kind === "incremental") {
          const handedOff = bitmapName(cycle.seq - 1);
          await qmp.execute("block-dirty-bitmap-merge", { node: d.node, target: bitmapName(cycle.seq), bitmaps: [handedOff] });
          await qmp.execute("block-dirty-bitmap-remove", { node: d.node, name: handedOff });
        } else {
          // An initial read that did not land leaves nothing to build on: it starts over.
          await qmp.execute("block-dirty-bitmap-remove", { node: d.node, name: bitmapName(cycle.seq) });
        }
      }
    },
  };
}

/**
 * A cut-off taken across all disks of a VM at once. Nothing is forgotten until `confirm()`:
 * `abort()` (or a crash, repaired at the next start) folds the changes into the next cycle.
 */
export class CaptureCycle {
  private state: "open" | "confirmed" | "aborted" = "open";

  constructor(
    readonly vmId: string,
    /** Cut-off number: the recording bitmap created by this cycle's transaction. */
    readonly seq: number,
    readonly kind: CycleKind,
    readonly cutoffAt: Date,
    readonly consistency: Consistency,
    readonly disks: DiskCycle[],
    private readonly handoff: TrackingHandoff,
    private readonly logger: Logger,
    private readonly onFinish: (outcome: "confirmed" | "aborted") => void,
    /** Removes the disk's cut-off graph and scratch files, whichever graph it was. */
    private readonly teardown: (disk: DiskCycle) => Promise<void>,
    /** How long the guest's vCPUs were stopped for the cut-off, when they were. */
    readonly vcpuPauseMs?: number,
    /** The cut-off was to freeze the guest and did not: why (the cycle is crash-consistent). */
    readonly quiesceFailure?: string,
    /** The consistency group's cut-off this cycle was cut in, if the VM is in a group. */
    readonly group?: GroupCut,
  ) {}

  get finished(): boolean {
    return this.state !== "open";
  }

  /** The replica has made the cycle durable: drop what the cycle carried. */
  async confirm(): Promise<void> {
    this.assertOpen();
    this.state = "confirmed";
    await this.closeConnections();
    for (const d of this.disks) await this.teardown(d);
    await this.handoff.confirmed(this);
    this.onFinish("confirmed");
    this.logger.info({ vm: this.vmId, seq: this.seq, kind: this.kind, vcpuPauseMs: this.vcpuPauseMs }, "cycle confirmed");
  }

  /** The cycle did not reach the replica: keep every change for the next cycle. */
  async abort(reason?: unknown): Promise<void> {
    this.assertOpen();
    this.state = "aborted";
    this.logger.warn({ vm: this.vmId, seq: this.seq, kind: this.kind, err: reason }, "cycle aborted");
    await this.closeConnections();
    try {
      for (const d of this.disks) await this.teardown(d);
      await this.handoff.aborted(this);
    } finally {
      this.onFinish("aborted");
    }
  }

  private async closeConnections(): Promise<void> {
    await Promise.allSettled(this.disks.flatMap((d) => d.clients.map((c) => c.disconnect())));
  }

  private assertOpen(): void {
    if (this.state !== "open") throw new CycleFinishedError(this.seq, this.state);
  }
}
