import type { SiteStorageDaemon } from "./siteStorageDaemon.js";

/**
 * A read-only NBD export named `node` of a qcow2 image on the site's storage daemon, for reading
 * a point or a seed without touching its chain (the backing chain opens from the image's own
 * header: relative names resolve beside it). `allocationDepth` adds the `qemu:allocation-depth`
 * context (which layer holds each extent).
 */
export async function addReadOnlyExport(daemon: SiteStorageDaemon, node: string, imagePath: string, opts: { allocationDepth?: boolean } = {}): Promise<void> {
  await daemon.qmp.execute("blockdev-add", { driver: "qcow2", "node-name": node, "read-only": true, file: { driver: "file", filename: imagePath, "read-only": true } });
  try {
    await daemon.qmp.execute("block-export-add", {
      type: "nbd",
      id: node,
      "node-name": node,
      name: node,
      writable: false,
      ...(opts.allocationDepth ? { "allocation-depth": true } : {}),
    });
  } catch (err) {
    await daemon.qmp.execute("blockdev-del", { "node-name": node }).catch(() => undefined);
    throw err;
  }
}

/** Removes what addReadOnlyExport added; the node goes only once QEMU says its export is gone. */
export async function removeReadOnlyExport(daemon: SiteStorageDaemon, node: string): Promise<void> {
  const gone = daemon.qmp.waitForEvent("BLOCK_EXPORT_DELETED", (d) => d.id === node, 10_000).catch(() => undefined);
  await daemon.qmp.execute("block-export-del", { id: node, mode: "hard" }).catch(() => undefined);
  await gone;
  await daemon.qmp.execute("blockdev-del", { "node-name": node }).catch(() => undefined);
}
