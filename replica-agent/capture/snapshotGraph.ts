import { closeSync, ftruncateSync, openSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../../src/common/logger.js";
import type { QmpClient } from "../../src/qemu/qmp/index.js";
import { accessNodeName, cbwNodeName, scratchNodeName } from "./naming.js";

/**
 * The guest-safe point-in-time view for a disk under a guest device (qemu-system-*), QEMU's
 * "copy-before-write + snapshot-access" fleecing:
 *
 *   device -> copy-before-write filter -> disk node      (guest writes copy old data first ...)
 *                    \-> target: raw scratch file        (... into the scratch)
 *   snapshot-access(filter) -> NBD export                (the disk as it was at the cut-off)
 *
 * `on-cbw-error: break-snapshot` makes a failed or timed-out copy break the snapshot, never the
 * guest's write (QEMU's default, break-guest-write, is what blockdev-backup sync=none uses).
 */
export interface GuestDevice {
  /** QOM path of the device's block backend, for qom-set drive. */
  qdev: string;
}

interface QueryBlockEntry {
  qdev?: string;
  inserted?: { "node-name"?: string };
}

export async function queryBlock(qmp: QmpClient): Promise<QueryBlockEntry[]> {
  return qmp.execute<QueryBlockEntry[]>("query-block");
}

/** The guest device whose drive is `node`, if any (qemu-storage-daemon has no devices at all). */
export async function deviceOnNode(qmp: QmpClient, node: string): Promise<GuestDevice | undefined> {
  const entry = (await queryBlock(qmp)).find((b) => b.qdev && b.inserted?.["node-name"] === node);
  return entry?.qdev ? { qdev: entry.qdev } : undefined;
}

export function scratchImagePath(scratchDir: string, vmId: string, diskId: string): string {
  return join(scratchDir, `${vmId}-${diskId}.scratch.raw`);
}

/** A sparse raw file as large as the disk: copies land at their own offsets, only they take space. */
export async function addScratchNode(qmp: QmpClient, opts: { diskId: string; imagePath: string; sizeBytes: number }): Promise<void> {
  const fd = openSync(opts.imagePath, "w", 0o600);
  try {
    ftruncateSync(fd, opts.sizeBytes);
  } finally {
    closeSync(fd);
  }
  await qmp.execute("blockdev-add", { driver: "file", "node-name": scratchNodeName(opts.diskId), filename: opts.imagePath });
}

/**
 * Puts the copy-before-write filter between the device and the disk. Must run while no guest
 * write can happen (vCPUs stopped): the filter copies `bitmap` when it is created, and the device
 * swap is not part of the bitmap transaction.
 */
export async function insertCbwFilter(
  qmp: QmpClient,
  opts: { diskId: string; diskNode: string; device: GuestDevice; bitmap?: { node: string; name: string }; cbwTimeoutSeconds: number; stepTimeoutMs: number },
): Promise<void> {
  const timeout = { timeoutMs: opts.stepTimeoutMs };
  await qmp.execute("blockdev-add", {
    driver: "copy-before-write",
    "node-name": cbwNodeName(opts.diskId),
    file: opts.diskNode,
    target: scratchNodeName(opts.diskId),
    "on-cbw-error": "break-snapshot",
    "cbw-timeout": opts.cbwTimeoutSeconds,
    // Only the cycle's changed blocks are read, so only they need their old data preserved.
    ...(opts.bitmap ? { bitmap: opts.bitmap } : {}),
  }, timeout);
  await qmp.execute("qom-set", { path: opts.device.qdev, property: "drive", value: cbwNodeName(opts.diskId) }, timeout);
}

export async function addSnapshotAccess(qmp: QmpClient, diskId: string): Promise<string> {
  const node = accessNodeName(diskId);
  await qmp.execute("blockdev-add", { driver: "snapshot-access", "node-name": node, file: cbwNodeName(diskId) });
  return node;
}

/**
 * Points every device whose drive is the filter `cbwNode` back at `diskNode`. QEMU drains the
 * device's requests while swapping, so this is safe with the guest running.
 */
export async function restoreDrives(qmp: QmpClient, cbwNode: string, diskNode: string, logger: Logger): Promise<string[]> {
  const restored: string[] = [];
  for (const b of await queryBlock(qmp)) {
    if (!b.qdev || b.inserted?.["node-name"] !== cbwNode) continue;
    await qmp.execute("qom-set", { path: b.qdev, property: "drive", value: diskNode });
    logger.info({ device: b.qdev, from: cbwNode, to: diskNode }, "device drive restored to the disk node");
    restored.push(b.qdev);
  }
  return restored;
}

/** The `file` child of a node, from QEMU's block graph (for filters of disks no longer configured). */
export async function fileChildOf(qmp: QmpClient, node: string): Promise<string | undefined> {
  try {
    const graph = await qmp.execute<{ nodes: Array<{ id: number; name: string }>; edges: Array<{ parent: number; child: number; name: string }> }>("x-debug-query-block-graph");
    const parent = graph.nodes.find((n) => n.name === node);
    const edge = parent && graph.edges.find((e) => e.parent === parent.id && e.name === "file");
    return edge ? graph.nodes.find((n) => n.id === edge.child)?.name : undefined;
  } catch {
    return undefined;
  }
}
