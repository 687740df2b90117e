import { chmodSync, existsSync, mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { errorMessage } from "../common/errors.js";
import { runTool } from "../qemu/processes/index.js";
import { SeedUnusableError, StorageWriteError } from "./errors.js";
import { fsyncFile } from "./exportManifest.js";
import type { ReplicaStorage } from "./replicaStorage.js";

/**
 * Images an initial replication starts from without the network: a seed copied into the VM's
 * storage, or an exported disk that becomes the first point's base. Both are written to a
 * `.partial` name and renamed once durable; a crash leaves a partial file that the site removes
 * at its next start (removeOrphans) and the command is run again.
 */

/** Not `.qcow2`: the site's orphan sweep removes qcow2 images the ledger does not list, and a seed precedes every point. */
const SEED_FILE = "seed.img";

/**
 * Copies `source` (qcow2 or raw) into the VM's storage as the seed of disk `diskId`. Without
 * force-share: a VM still running on the image holds QEMU's lock and the copy is refused rather
 * than taken from a disk that changes under it. The copy, not the original, becomes the first
 * point's backing file, so the operator may delete or reuse the original afterwards.
 */
export async function copySeed(storage: ReplicaStorage, vmId: string, diskId: string, source: string): Promise<{ imagePath: string; sizeBytes: number }> {
  if (!existsSync(source) || !statSync(source).isFile()) throw new SeedUnusableError(diskId, source, "does not exist on this site's host (give a path the site's user can read)");
  const dest = join(storage.diskDir(vmId, diskId), SEED_FILE);
  mkdirSync(dirname(dest), { recursive: true, mode: 0o700 });
  const partial = `${dest}.partial`;
  rmSync(partial, { force: true });
  try {
    await runTool("qemu-img", ["convert", "-q", "-O", "qcow2", "-o", "compat=1.1", source, partial]);
  } catch (err) {
    rmSync(partial, { force: true });
    const why = /lock/i.test(errorMessage(err))
      ? "is in use by another process (a VM running on it): shut that VM down or copy the image first"
      : `cannot be read: ${errorMessage(err)}`;
    throw new SeedUnusableError(diskId, source, why, { cause: err });
  }
  chmodSync(partial, 0o600);
  fsyncFile(partial);
  renameSync(partial, dest);
  fsyncFile(dirname(dest));
  const info = JSON.parse((await runTool("qemu-img", ["info", "--output=json", dest])).stdout) as { "virtual-size": number };
  return { imagePath: dest, sizeBytes: info["virtual-size"] };
}

/**
 * Converts each exported raw image into the base of point `seq` (`base.qcow2`), all or none:
 * the caller records the point in the ledger next, and removes these images if that fails.
 */
export async function importBaseImages(
  storage: ReplicaStorage,
  vmId: string,
  seq: number,
  disks: Array<{ diskId: string; rawPath: string }>,
): Promise<Array<{ diskId: string; imagePath: string }>> {
  const targets = disks.map((d) => {
    const final = storage.pointImagePath(vmId, d.diskId, seq, true);
    return { ...d, final, partial: `${final}.partial` };
  });
  try {
    for (const t of targets) {
      mkdirSync(dirname(t.final), { recursive: true, mode: 0o700 });
      rmSync(t.partial, { force: true });
      // Sparse in, sparse out: runs of zeroes in the raw image take no space in the base.
      await runTool("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", t.rawPath, t.partial]).catch((err: unknown) => {
        throw new StorageWriteError(vmId, t.diskId, `importing ${t.rawPath} failed: ${errorMessage(err)}`, { cause: err });
      });
      chmodSync(t.partial, 0o600);
      fsyncFile(t.partial);
    }
  } catch (err) {
    for (const t of targets) rmSync(t.partial, { force: true });
    throw err;
  }
  for (const t of targets) renameSync(t.partial, t.final);
  for (const dir of new Set(targets.map((t) => dirname(t.final)))) fsyncFile(dir);
  return targets.map((t) => ({ diskId: t.diskId, imagePath: t.final }));
}
