import type { Logger } from "../../src/common/logger.js";
import { findBlockNode, type QmpClient } from "../../src/qemu/qmp/index.js";
import type { Consistency, CycleKind } from "./captureCycle.js";
import { addFleeceNode, fleeceBackupAction, fleeceImagePath } from "./fleece.js";
import { bitmapName } from "./naming.js";
import { IothreadDiskError } from "./errors.js";
import { deviceIothread, guestAttachment, unattachedIothreads, type Attachment, type GuestDevice } from "./guestAttachment.js";
import { addScratchNode, insertCbwFilter, scratchImagePath } from "./snapshotGraph.js";
import { teardownDisk } from "./teardown.js";
import type { GroupCut, GroupCutoff } from "./groupCutoff.js";
import { withVcpusPaused, type PauseMarker } from "./vcpuPause.js";

/**
 * Deadline of each QMP step while the vCPUs are stopped: the pause stays bounded even if QEMU
 * stalls (the monitor connection is then dropped and the guest resumed over a new one).
 */
const PAUSED_STEP_TIMEOUT_MS = 10_000;

export interface CutoffDisk {
  id: string;
  node: string;
  sizeBytes: number;
  /** Set when a guest device sits on the disk (maybe above a throttle filter): the copy-before-write graph is used. */
  device?: GuestDevice;
  /** Why a disk under a guest device still uses blockdev-backup sync=none (not guest-safe). */
  fallback?: string;
}

export interface CutoffRequest {
  qmp: QmpClient;
  vmId: string;
  kind: CycleKind;
  seq: number;
  disks: ReadonlyArray<{ id: string; node: string }>;
  scratchDir: string;
  cbwTimeoutSeconds: number;
  /** Brackets the cut with a filesystem freeze; returns how consistent the cut is. */
  freeze: <T>(fn: () => Promise<T>) => Promise<{ result: T; consistency: Consistency; quiesceFailure?: string }>;
  pauseMarker: PauseMarker;
  /** A consistency group's coordinator: the cut runs in the group's common pause instead of this VM's own. */
  group?: GroupCutoff;
  logger: Logger;
}

export interface TakenCutoff {
  at: Date;
  consistency: Consistency;
  /** A freeze was wanted and did not happen or hold: why (the cut is crash-consistent). */
  quiesceFailure: string | undefined;
  disks: CutoffDisk[];
  /** How long the vCPUs were stopped around the cut; undefined when they were not (no guest device, or VM not running). */
  vcpuPauseMs: number | undefined;
  /** The group cut-off this one was part of. */
  group?: GroupCut;
}

/** Every file a cut-off of the disk may have created in the scratch directory. */
export function scratchFiles(scratchDir: string, vmId: string, diskId: string): string[] {
  return [scratchImagePath(scratchDir, vmId, diskId), fleeceImagePath(scratchDir, vmId, diskId)];
}

/**
 * The cut-off of all of a VM's disks at one instant: one QMP transaction rotates the bitmaps (and
 * starts sync=none fleecing for disks without a guest device). For disks under a guest device the
 * copy-before-write filter is inserted in the same vCPU pause, just before the transaction; those
 * steps are not transaction actions, and with the vCPUs stopped and I/O drained no guest write can
 * fall between them. On failure everything built is removed and no bitmap has changed.
 */
export async function takeCutoff(req: CutoffRequest): Promise<TakenCutoff> {
  const { qmp, kind, seq, logger } = req;
  const disks: CutoffDisk[] = [];
  let rotated = false;
  // Checked before anything is built: an iothread disk must never be exported (it may abort QEMU).
  const attachments = new Map<string, Attachment | undefined>();
  for (const d of req.disks) {
    const attached = await guestAttachment(qmp, d.node);
    const iothread = attached ? await deviceIothread(qmp, attached.qdev) : await unattachedIothreads(qmp);
    if (iothread !== "") throw new IothreadDiskError(req.vmId, d.id, attached?.qdev ?? `(the device above node ${d.node})`, iothread);
    attachments.set(d.id, attached);
  }
  try {
    for (const d of req.disks) {
      const sizeBytes = (await findBlockNode(qmp, d.node))?.image["virtual-size"] ?? 0;
      const attached = attachments.get(d.id);
      const device = attached?.device;
      disks.push({ id: d.id, node: d.node, sizeBytes, device, fallback: attached?.fallback });
      if (device) await addScratchNode(qmp, { diskId: d.id, imagePath: scratchImagePath(req.scratchDir, req.vmId, d.id), sizeBytes });
      else await addFleeceNode(qmp, { diskId: d.id, diskNode: d.node, imagePath: fleeceImagePath(req.scratchDir, req.vmId, d.id), sizeBytes });
    }
    const actions = disks.flatMap((d) => [
      { type: "block-dirty-bitmap-add", data: { node: d.node, name: bitmapName(seq), persistent: true } },
      ...(kind === "incremental" ? [{ type: "block-dirty-bitmap-disable", data: { node: d.node, name: bitmapName(seq - 1) } }] : []),
      ...(d.device ? [] : [fleeceBackupAction(d.id, d.node)]),
    ]);
    const cut = async (): Promise<{ at: Date; vcpuPauseMs: number | undefined; group?: GroupCut }> => {
      const guestDisks = disks.filter((d): d is CutoffDisk & { device: GuestDevice } => d.device !== undefined);
      const cutDisks = async (): Promise<Date> => {
        for (const d of guestDisks) {
          await insertCbwFilter(qmp, {
            diskId: d.id,
            diskNode: d.node,
            device: d.device,
            // The initial full read (and a resync's comparison) reads every byte, so every
            // overwritten block must be preserved: no bitmap. That also leaves the snapshot
            // readable everywhere, so base:allocation still skips holes and zeroes.
            bitmap: kind === "incremental" ? { node: d.node, name: bitmapName(seq - 1) } : undefined,
            cbwTimeoutSeconds: req.cbwTimeoutSeconds,
            stepTimeoutMs: PAUSED_STEP_TIMEOUT_MS,
          });
        }
        // Stamped before the transaction: every write acknowledged before `at` is in the point.
        const at = new Date();
        await qmp.execute("transaction", { actions }, { timeoutMs: PAUSED_STEP_TIMEOUT_MS });
        rotated = true;
        return at;
      };
      if (req.group) {
        // Every member's guest is stopped around every member's cut: one instant for the group.
        const g = await req.group.join(req.vmId, qmp, req.pauseMarker, logger, cutDisks);
        return { at: g.result, vcpuPauseMs: g.pausedMs, group: g.group };
      }
      if (guestDisks.length === 0) {
        // Stamped before the transaction: every write acknowledged before `at` is in the point (a
        // stamp taken after a slow reply would claim writes it does not hold).
        const at = new Date();
        await qmp.execute("transaction", { actions });
        rotated = true;
        return { at, vcpuPauseMs: undefined };
      }
      const paused = await withVcpusPaused(qmp, req.pauseMarker, logger, cutDisks);
      return { at: paused.result, vcpuPauseMs: paused.pausedMs };
    };
    const frozen = await req.freeze(cut);
    return {
      at: frozen.result.at,
      consistency: frozen.consistency,
      quiesceFailure: frozen.quiesceFailure,
      disks,
      vcpuPauseMs: frozen.result.vcpuPauseMs,
      ...(frozen.result.group ? { group: frozen.result.group } : {}),
    };
  } catch (err) {
    // The transaction is atomic and the last step of the cut: if it failed no bitmap changed and
    // only the graph must go. A failure after it (resuming the guest) also undoes the rotation.
    if (rotated) await unrotate(qmp, req).catch((e: unknown) => logger.error({ err: e }, "could not undo the bitmap rotation; the next start merges it back"));
    for (const d of req.disks) {
      await teardownDisk(qmp, { diskId: d.id, diskNode: d.node }, scratchFiles(req.scratchDir, req.vmId, d.id), logger).catch((e: unknown) =>
        logger.error({ err: e, disk: d.id }, "teardown after a failed cut-off failed"),
      );
    }
    throw err;
  }
}

async function unrotate(qmp: QmpClient, req: CutoffRequest): Promise<void> {
  for (const d of req.disks) {
    // The agent still remembers seq - 1 as recording: make it so again, with what seq caught.
    if (req.kind === "incremental") {
      await qmp.execute("block-dirty-bitmap-enable", { node: d.node, name: bitmapName(req.seq - 1) });
      await qmp.execute("block-dirty-bitmap-merge", { node: d.node, target: bitmapName(req.seq - 1), bitmaps: [bitmapName(req.seq)] });
    }
    await qmp.execute("block-dirty-bitmap-remove", { node: d.node, name: bitmapName(req.seq) });
  }
}
