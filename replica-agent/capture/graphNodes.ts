import type { Logger } from "../../src/common/logger.js";
import { QmpCommandError, queryBlockExports, queryBlockJobs, queryNamedBlockNodes, type QmpClient } from "../../src/qemu/qmp/index.js";

/** Deletes an export and waits until QEMU has let go of it (and of its bitmap). */
/** Returns whether there was something to delete (here and below). */
export async function deleteExport(qmp: QmpClient, id: string, logger: Logger): Promise<boolean> {
  const exports = await queryBlockExports(qmp);
  if (!exports.some((e) => e.id === id)) return false;
  // The bitmap stays busy until the export is really gone, which QEMU signals asynchronously.
  const deleted = qmp.waitForEvent("BLOCK_EXPORT_DELETED", (d) => d.id === id, 30_000);
  deleted.catch(() => undefined);
  try {
    await qmp.execute("block-export-del", { id, mode: "hard" });
  } catch (err) {
    if (!isNotFound(err)) throw err;
    logger.debug({ id }, "export already gone");
    return false;
  }
  await deleted;
  return true;
}

export async function cancelJob(qmp: QmpClient, id: string, logger: Logger): Promise<boolean> {
  const jobs = await queryBlockJobs(qmp);
  if (!jobs.some((j) => j.device === id)) return false;
  const cancelled = qmp.waitForEvent("JOB_STATUS_CHANGE", (d) => d.id === id && d.status === "null", 30_000);
  cancelled.catch(() => undefined);
  try {
    await qmp.execute("block-job-cancel", { device: id, force: true });
  } catch (err) {
    if (!isNotFound(err)) throw err;
    logger.debug({ id }, "job already gone");
    return false;
  }
  await cancelled;
  return true;
}

export async function deleteNode(qmp: QmpClient, node: string, logger: Logger): Promise<boolean> {
  if (!(await queryNamedBlockNodes(qmp)).some((n) => n["node-name"] === node)) return false;
  try {
    await qmp.execute("blockdev-del", { "node-name": node });
  } catch (err) {
    if (!isNotFound(err)) throw err;
    logger.debug({ node }, "node already gone");
    return false;
  }
  return true;
}

export function isNotFound(err: unknown): boolean {
  return err instanceof QmpCommandError && (err.errorClass === "DeviceNotFound" || /not found|cannot find|failed to find|no .* found/i.test(err.description));
}
