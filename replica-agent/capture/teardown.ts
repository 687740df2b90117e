import { rmSync } from "node:fs";
import type { Logger } from "../../src/common/logger.js";
import { queryBlockExports, queryBlockJobs, queryNamedBlockNodes, type QmpClient } from "../../src/qemu/qmp/index.js";
import { cancelJob, deleteExport, deleteNode } from "./graphNodes.js";
import {
  accessNodeName,
  backupJobId,
  cbwNodeName,
  diskIdOfCbwNode,
  exportId,
  fleeceNodeName,
  isOurCbwNode,
  isOurExport,
  isOurFleeceNode,
  isOurJob,
  scratchNodeName,
} from "./naming.js";
import { fileChildOf, restoreDrives } from "./snapshotGraph.js";

/**
 * Removes everything a cut-off of the disk may have built, either graph, each part only if it is
 * there, in the order the parts hold each other: export, job, snapshot-access, the device's drive
 * back onto the disk node, filter, fleece and scratch nodes, files. Used after every cycle, on
 * every failure and for what a crashed agent left.
 */
export async function teardownDisk(qmp: QmpClient, disk: { diskId: string; diskNode: string }, files: readonly string[], logger: Logger): Promise<string[]> {
  const { diskId, diskNode } = disk;
  const removed: string[] = [];
  if (await deleteExport(qmp, exportId(diskId), logger)) removed.push(`export ${exportId(diskId)}`);
  if (await cancelJob(qmp, backupJobId(diskId), logger)) removed.push(`job ${backupJobId(diskId)}`);
  if (await deleteNode(qmp, accessNodeName(diskId), logger)) removed.push(`node ${accessNodeName(diskId)}`);
  for (const parent of await restoreDrives(qmp, cbwNodeName(diskId), diskNode, logger)) removed.push(`${parent} back to ${diskNode}`);
  for (const node of [cbwNodeName(diskId), fleeceNodeName(diskId), scratchNodeName(diskId)]) {
    if (await deleteNode(qmp, node, logger)) removed.push(`node ${node}`);
  }
  for (const f of files) rmSync(f, { force: true });
  return removed;
}

/**
 * Everything with our prefix that is still in QEMU after the configured disks were torn down: what
 * a crashed earlier run left for disks no longer configured. A filter still under a device is
 * swapped out first (its file child found in the block graph); one that cannot be is left in
 * place, where it is harmless to the guest (break-snapshot), and reported.
 */
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
  const order = (name: string) => (name.includes("-access-") ? 0 : isOurCbwNode(name) ? 1 : 2);
  const nodes = (await queryNamedBlockNodes(qmp))
    .map((n) => n["node-name"])
    .filter(isOurFleeceNode)
    .sort((a, b) => order(a) - order(b));
  for (const node of nodes) {
    if (isOurCbwNode(node)) {
      const child = await fileChildOf(qmp, node);
      if (!child) {
        logger.error({ node, disk: diskIdOfCbwNode(node) }, "a leftover copy-before-write filter's disk node is unknown; it stays under its device (harmless to the guest)");
        continue;
      }
      const parents = await restoreDrives(qmp, node, child, logger);
      removed.push(...parents.map((p) => `${p} back to ${child}`));
    }
    if (await deleteNode(qmp, node, logger)) removed.push(`node ${node}`);
  }
  return removed;
}
