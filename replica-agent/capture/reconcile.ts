import type { Logger } from "../../src/common/logger.js";
import { namedBitmaps, queryNamedBlockNodes, type QmpClient } from "../../src/qemu/qmp/index.js";
import type { VmCaptureState } from "./captureState.js";
import { DiskNodeNotFoundError } from "./errors.js";
import { bitmapName, parseBitmapSeq } from "./naming.js";

export type DiskCaptureStatus = "ok" | "not-enabled" | "resync-required";

export interface DiskReport {
  diskId: string;
  node: string;
  status: DiskCaptureStatus;
  reason?: string;
  /** The recording bitmap's sequence when status is ok. */
  seq?: number;
  /** Bytes changed since the last cut-off, from the recording bitmap. */
  dirtyBytes?: number;
  /** Status not-enabled because the cycle that enables tracking (this sequence) was never acked, not because nothing was ever enabled. */
  unacknowledgedEnableSeq?: number;
  sizeBytes: number;
}

export interface ReconcileResult {
  disks: DiskReport[];
  /** Handed-off bitmaps of an interrupted cycle, merged back into the recording one. */
  mergedBitmaps: string[];
}

/**
 * Compares what the agent remembers with what QEMU has, per disk. An interrupted cycle (agent
 * died after the cut-off) is repaired by merging its handed-off bitmap back; a missing or
 * inconsistent bitmap (QEMU died) is reported as resync required and left for the caller to decide.
 */
export async function reconcileDisks(qmp: QmpClient, state: VmCaptureState, disks: ReadonlyArray<{ id: string; node: string }>, logger: Logger): Promise<ReconcileResult> {
  const nodes = await queryNamedBlockNodes(qmp);
  const reports: DiskReport[] = [];
  const mergedBitmaps: string[] = [];
  for (const disk of disks) {
    const node = nodes.find((n) => n["node-name"] === disk.node);
    if (!node)
      throw new DiskNodeNotFoundError(
        state.vmId,
        disk.id,
        disk.node,
        nodes.map((n) => n["node-name"]),
      );
    const sizeBytes = node.image["virtual-size"];
    const remembered = state.disks[disk.id];
    const ours = namedBitmaps(node)
      .map((b) => ({ ...b, seq: parseBitmapSeq(b.name) }))
      .filter((b): b is typeof b & { seq: number } => b.seq !== undefined)
      .sort((a, b) => a.seq - b.seq);
    const base = { diskId: disk.id, node: disk.node, sizeBytes };

    if (!remembered?.enabled) {
      // Remembered but not enabled: an enable (initial or resync cycle) whose ack never came. The
      // site may have committed it all the same; only a comparison can tell what it holds.
      const reason = ours.length
        ? `leftover bitmaps ${ours.map((b) => b.name).join(", ")} from an unfinished enable`
        : remembered
          ? `cycle ${remembered.seq}, which enables change tracking, was never acknowledged by the replica site (the site, the link or the agent stopped first)`
          : undefined;
      reports.push({ ...base, status: "not-enabled", reason, ...(remembered ? { unacknowledgedEnableSeq: remembered.seq } : {}) });
      continue;
    }
    const inconsistent = ours.filter((b) => b.inconsistent);
    if (inconsistent.length > 0) {
      const names = inconsistent.map((b) => b.name).join(", ");
      reports.push({ ...base, status: "resync-required", reason: `bitmap ${names} is inconsistent: QEMU or the host stopped without closing the image cleanly` });
      continue;
    }
    const recording = ours.filter((b) => b.recording);
    const active = recording[recording.length - 1];
    if (!active) {
      const why = ours.length
        ? `no recording qreplica bitmap (found only disabled ${ours.map((b) => b.name).join(", ")})`
        : `bitmap ${bitmapName(remembered.seq)} is missing: QEMU restarted after a crash, or the bitmap was removed outside qreplica`;
      reports.push({ ...base, status: "resync-required", reason: why });
      continue;
    }
    if (active.seq < remembered.seq) {
      reports.push({
        ...base,
        status: "resync-required",
        reason: `QEMU records changes in ${active.name}, older than ${bitmapName(remembered.seq)}: the disk image was replaced or restored`,
      });
      continue;
    }
    for (const stale of ours.filter((b) => b !== active)) {
      // Changes of an unconfirmed cycle: fold them into the recording bitmap so they are sent again.
      await qmp.execute("block-dirty-bitmap-merge", { node: disk.node, target: active.name, bitmaps: [stale.name] });
      await qmp.execute("block-dirty-bitmap-remove", { node: disk.node, name: stale.name });
      mergedBitmaps.push(`${disk.id}:${stale.name}`);
      logger.warn({ disk: disk.id, bitmap: stale.name, into: active.name }, "merged the bitmap of an unconfirmed cycle back");
    }
    remembered.seq = active.seq;
    const refreshed = (await queryNamedBlockNodes(qmp)).find((n) => n["node-name"] === disk.node);
    const dirtyBytes = refreshed ? namedBitmaps(refreshed).find((b) => b.name === active.name)?.count : undefined;
    reports.push({ ...base, status: "ok", seq: active.seq, dirtyBytes });
  }
  return { disks: reports, mergedBitmaps };
}
