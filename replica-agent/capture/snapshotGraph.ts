import { closeSync, ftruncateSync, openSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../../src/common/logger.js";
import type { QmpClient } from "../../src/qemu/qmp/index.js";
import { queryNamedBlockNodes } from "../../src/qemu/qmp/index.js";
import { blockGraph, parentsOf, throttleGroupOf, type GuestDevice, type ThrottleFilter } from "./guestAttachment.js";
import { PREFIX, accessNodeName, cbwNodeName, scratchNodeName } from "./naming.js";

/**
 * The guest-safe point-in-time view for a disk under a guest device (qemu-system-*), QEMU's
 * "copy-before-write + snapshot-access" fleecing:
 *
 *   device [-> throttle] -> copy-before-write filter -> disk node   (guest writes copy old data first ...)
 *                                   \-> target: raw scratch file   (... into the scratch)
 *   snapshot-access(filter) -> NBD export                (the disk as it was at the cut-off)
 *
 * `on-cbw-error: break-snapshot` makes a failed or timed-out copy break the snapshot, never the
 * guest's write (QEMU's default, break-guest-write, is what blockdev-backup sync=none uses).
 * Where the filter is spliced in: see guestAttachment.ts.
 */

interface QueryBlockEntry {
  qdev?: string;
  inserted?: { "node-name"?: string };
}

export async function queryBlock(qmp: QmpClient): Promise<QueryBlockEntry[]> {
  return qmp.execute<QueryBlockEntry[]>("query-block");
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
 * Puts the copy-before-write filter right above the disk node: as the device's drive, or as the
 * file of the throttle filter the device sits on. Must run while no guest write can happen (vCPUs
 * stopped): the filter copies `bitmap` when it is created, and the swap is not part of the bitmap
 * transaction.
 */
export async function insertCbwFilter(
  qmp: QmpClient,
  opts: { diskId: string; diskNode: string; device: GuestDevice; bitmap?: { node: string; name: string }; cbwTimeoutSeconds: number; stepTimeoutMs: number },
): Promise<void> {
  const timeout = { timeoutMs: opts.stepTimeoutMs };
  await qmp.execute(
    "blockdev-add",
    {
      driver: "copy-before-write",
      "node-name": cbwNodeName(opts.diskId),
      file: opts.diskNode,
      target: scratchNodeName(opts.diskId),
      "on-cbw-error": "break-snapshot",
      "cbw-timeout": opts.cbwTimeoutSeconds,
      // Only the cycle's changed blocks are read, so only they need their old data preserved.
      ...(opts.bitmap ? { bitmap: opts.bitmap } : {}),
    },
    timeout,
  );
  const filter = opts.device.filter;
  if (filter) await reopenThrottle(qmp, filter, cbwNodeName(opts.diskId), opts.stepTimeoutMs);
  else await qmp.execute("qom-set", { path: opts.device.qdev, property: "drive", value: cbwNodeName(opts.diskId) }, timeout);
}

/** blockdev-reopen resets every option not given: a throttle node has its group and its file. */
async function reopenThrottle(qmp: QmpClient, filter: ThrottleFilter, file: string, timeoutMs?: number): Promise<void> {
  await qmp.execute(
    "blockdev-reopen",
    { options: [{ driver: "throttle", "node-name": filter.node, "throttle-group": filter.throttleGroup, file }] },
    timeoutMs === undefined ? undefined : { timeoutMs },
  );
}

export async function addSnapshotAccess(qmp: QmpClient, diskId: string): Promise<string> {
  const node = accessNodeName(diskId);
  await qmp.execute("blockdev-add", { driver: "snapshot-access", "node-name": node, file: cbwNodeName(diskId) });
  return node;
}

/**
 * Puts `diskNode` back where the filter `cbwNode` stood: as the drive of every device on the
 * filter, as the file of every throttle filter on it. QEMU drains the affected requests while
 * swapping, so this is safe with the guest running.
 */
export async function restoreDrives(qmp: QmpClient, cbwNode: string, diskNode: string, logger: Logger): Promise<string[]> {
  const restored: string[] = [];
  for (const b of await queryBlock(qmp)) {
    if (!b.qdev || b.inserted?.["node-name"] !== cbwNode) continue;
    await qmp.execute("qom-set", { path: b.qdev, property: "drive", value: diskNode });
    logger.info({ device: b.qdev, from: cbwNode, to: diskNode }, "device drive restored to the disk node");
    restored.push(`drive of ${b.qdev}`);
  }
  const graph = await blockGraph(qmp);
  const filters = graph ? parentsOf(graph, cbwNode).filter((p) => p.type === "block-driver" && p.role === "file" && !p.name.startsWith(PREFIX)) : [];
  if (filters.length === 0) return restored;
  const named = await queryNamedBlockNodes(qmp);
  for (const f of filters) {
    const node = named.find((n) => n["node-name"] === f.name);
    const throttleGroup = node?.drv === "throttle" ? throttleGroupOf(node.file) : undefined;
    if (!throttleGroup) {
      logger.error(
        { filter: f.name, driver: node?.drv, cbwNode },
        "a filter above the copy-before-write filter is not a throttle filter this agent can reopen; it stays (harmless to the guest)",
      );
      continue;
    }
    await reopenThrottle(qmp, { node: f.name, throttleGroup }, diskNode);
    logger.info({ filter: f.name, from: cbwNode, to: diskNode }, "throttle filter's file restored to the disk node");
    restored.push(`file of ${f.name}`);
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
