import { join } from "node:path";
import type { QmpClient } from "../../src/qemu/qmp/index.js";
import { createImage } from "../../src/qemu/processes/index.js";
import { backupJobId, exportId, fleeceNodeName } from "./naming.js";

/**
 * Fleecing for disks no guest device sits on (qemu-storage-daemon): backup sync=none into a
 * scratch overlay backed by the live disk gives a point-in-time view, since writes after the
 * cut-off first copy the old data into the overlay. Its copy-before-write fails the *writer* when
 * the scratch cannot take the copy, which is why disks under a guest device use the
 * copy-before-write filter with break-snapshot instead (snapshotGraph.ts).
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

/** The cycle's read-only NBD export of its point-in-time node (fleece overlay or snapshot-access). */
export async function addCutoffExport(qmp: QmpClient, opts: { diskId: string; node: string; name: string; bitmap?: { node: string; name: string } }): Promise<void> {
  await qmp.execute("block-export-add", {
    type: "nbd",
    id: exportId(opts.diskId),
    "node-name": opts.node,
    name: opts.name,
    writable: false,
    ...(opts.bitmap ? { bitmaps: [opts.bitmap] } : {}),
  });
}
