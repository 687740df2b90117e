import { rmSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../../src/common/logger.js";
import { QmpCommandError, queryBlockExports, queryBlockJobs, queryNamedBlockNodes, type QmpClient } from "../../src/qemu/qmp/index.js";
import { createImage } from "../../src/qemu/processes/index.js";
import { backupJobId, exportId, fleeceNodeName, isOurExport, isOurFleeceNode, isOurJob } from "./naming.js";

/**
 * Fleecing (backup sync=none into a scratch overlay backed by the live disk) gives a point-in-time
 * view: after the cut-off, guest writes first copy the old data into the overlay, so the export of
 * the overlay keeps showing the disk as it was at the cut-off.
 */
export function fleeceImagePath(fleeceDir: string, vmId: string, diskId: string): string {
  return join(fleeceDir, `${vmId}-${diskId}.fleece.qcow2`);
}

export async function addFleeceNode(qmp: QmpClient, opts: { diskId: string; diskNode: string; imagePath: string; sizeBytes: number }): Promise<void> {
  // The scratch has no backing in its header; the live node is attached as backing at blockdev-add.
  await createImage(opts.imagePath, opts.sizeBytes);
  await qmp.execute("blockdev-add", {
    driver: "qcow2",
    "node-name": fleeceNodeName(opts.diskId),
    file: { driver: "file", filename: opts.imagePath },
    backing: opts.diskNode,
  });
}

/** The transaction action that starts fleecing from `diskNode` into the disk's fleece node. */
export function fleeceBackupAction(diskId: string, diskNode: string): Record<string, unknown> {
  return {
    type: "blockdev-backup",
    data: { "job-id": backupJobId(diskId), device: diskNode, target: fleeceNodeName(diskId), sync: "none" },
  };
}

export async function addFleeceExport(qmp: QmpClient, opts: { diskId: string; name: string; bitmap?: { node: string; name: string } }): Promise<void> {
  await qmp.execute("block-export-add", {
    type: "nbd",
    id: exportId(opts.diskId),
    "node-name": fleeceNodeName(opts.diskId),
    name: opts.name,
    writable: false,
    ...(opts.bitmap ? { bitmaps: [opts.bitmap] } : {}),
  });
}

/**
 * Removes the export, the job and the fleece node in that order (each holds the next), tolerating
 * parts that are already gone. Used after every cycle and to clear leftovers of a crashed agent.
 */
export async function teardownFleece(qmp: QmpClient, diskId: string, imagePath: string | undefined, logger: Logger): Promise<void> {
  await deleteExport(qmp, exportId(diskId), logger);
  await cancelJob(qmp, backupJobId(diskId), logger);
  await deleteNode(qmp, fleeceNodeName(diskId), logger);
  if (imagePath) rmSync(imagePath, { force: true });
}

/** Everything with our prefix that is still in QEMU: what a crashed earlier run left behind. */
export async function removeLeftovers(qmp: QmpClient, logger: Logger): Promise<string[]> {
  const removed: string[] = [];
  for (const e of await queryBlockExports(qmp)) {
    if (isOurExport(e.id)) {
      await deleteExport(qmp, e.id, logger);
      removed.push(`export ${e.id}`);
    }
  }
  for (const j of await queryBlockJobs(qmp)) {
    if (isOurJob(j.device)) {
      await cancelJob(qmp, j.device, logger);
      removed.push(`job ${j.device}`);
    }
  }
  for (const n of await queryNamedBlockNodes(qmp)) {
    if (isOurFleeceNode(n["node-name"])) {
      await deleteNode(qmp, n["node-name"], logger);
      removed.push(`node ${n["node-name"]}`);
    }
  }
  return removed;
}

async function deleteExport(qmp: QmpClient, id: string, logger: Logger): Promise<void> {
  const exports = await queryBlockExports(qmp);
  if (!exports.some((e) => e.id === id)) return;
  // The bitmap stays busy until the export is really gone, which QEMU signals asynchronously.
  const deleted = qmp.waitForEvent("BLOCK_EXPORT_DELETED", (d) => d.id === id, 30_000);
  deleted.catch(() => undefined);
  try {
    await qmp.execute("block-export-del", { id, mode: "hard" });
  } catch (err) {
    if (!isNotFound(err)) throw err;
    logger.debug({ id }, "export already gone");
    return;
  }
  await deleted;
}

async function cancelJob(qmp: QmpClient, id: string, logger: Logger): Promise<void> {
  const jobs = await queryBlockJobs(qmp);
  if (!jobs.some((j) => j.device === id)) return;
  const cancelled = qmp.waitForEvent("JOB_STATUS_CHANGE", (d) => d.id === id && d.status === "null", 30_000);
  cancelled.catch(() => undefined);
  try {
    await qmp.execute("block-job-cancel", { device: id, force: true });
  } catch (err) {
    if (!isNotFound(err)) throw err;
    logger.debug({ id }, "job already gone");
    return;
  }
  await cancelled;
}

async function deleteNode(qmp: QmpClient, node: string, logger: Logger): Promise<void> {
  if (!(await queryNamedBlockNodes(qmp)).some((n) => n["node-name"] === node)) return;
  try {
    await qmp.execute("blockdev-del", { "node-name": node });
  } catch (err) {
    if (!isNotFound(err)) throw err;
    logger.debug({ node }, "fleece node already gone");
  }
}

function isNotFound(err: unknown): boolean {
  return err instanceof QmpCommandError && (err.errorClass === "DeviceNotFound" || /not found|cannot find|failed to find|no .* found/i.test(err.description));
}
