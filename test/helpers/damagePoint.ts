import { runTool } from "../../src/qemu/processes/runTool.js";

/**
 * Damages a recovery point on purpose (what a drill must catch): zeroes the first sector (the
 * counter guest's boot sector) of the point's own replica image, as a failing disk or a careless
 * hand would. Only that point and the points stacked on it read the damage; older points do not.
 * Image locking is off for the write: the site may hold the image open as a read-only backing file.
 * The ledger is not touched: the point stays listed, as a damaged replica would.
 */
export async function damagePointImage(imagePath: string): Promise<void> {
  const opts = `driver=qcow2,file.driver=file,file.filename=${imagePath.replaceAll(",", ",,")},file.locking=off`;
  const r = await runTool("qemu-io", ["--image-opts", opts, "-c", "write -P 0 0 512"]);
  if (!/wrote 512\/512 bytes/.test(r.stdout)) throw new Error(`qemu-io did not damage ${imagePath}: ${r.stdout}${r.stderr}`);
  // The point reads the damage through its chain (what a VM booted from it sees).
  const check = await runTool("qemu-io", ["-r", "-U", "-f", "qcow2", "-c", "read -P 0 0 512", imagePath]);
  if (!/read 512\/512 bytes/.test(check.stdout) || /verification failed/i.test(check.stdout))
    throw new Error(`${imagePath} does not read zeroes at LBA 0 after the damage: ${check.stdout}`);
}
