import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { dirname, join } from "node:path";
import { chunkDigest, zeroChunkDigest, type ChunkDigestName } from "../common/chunkDigest.js";
import { errorMessage } from "../common/errors.js";
import { writeChunkHashFile } from "./chunkHashFile.js";
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

/**
 * One read of an exported raw image: its SHA-256 (checked against the manifest) and the digest of
 * each of its chunks, which becomes the imported point's chunk hash index (a later resync then
 * compares against it without reading the replica).
 */
export async function hashExportedImage(path: string, chunkBytes: number, digest: ChunkDigestName): Promise<{ sha256: string; chunkHashes: Buffer }> {
  const whole = createHash("sha256");
  const hashes: Buffer[] = [];
  const zero = Buffer.alloc(chunkBytes);
  const unit = Buffer.allocUnsafe(chunkBytes * 16);
  const fh = await open(path, "r");
  try {
    for (let at = 0; ; ) {
      let filled = 0;
      while (filled < unit.length) {
        const { bytesRead } = await fh.read(unit, filled, unit.length - filled, at + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      if (filled === 0) break;
      const data = unit.subarray(0, filled);
      whole.update(data);
      for (let c = 0; c < filled; c += chunkBytes) {
        const chunk = data.subarray(c, Math.min(c + chunkBytes, filled));
        hashes.push(chunk.equals(zero.subarray(0, chunk.length)) ? zeroChunkDigest(digest, chunk.length) : chunkDigest(digest, chunk));
      }
      at += filled;
      if (filled < unit.length) break;
    }
  } finally {
    await fh.close();
  }
  return { sha256: whole.digest("hex"), chunkHashes: Buffer.concat(hashes) };
}

/** The imported point's chunk hash index, written after its image (an index never exists without its point). */
export function writeImportedIndex(storage: ReplicaStorage, vmId: string, diskId: string, seq: number, sizeBytes: number, chunkBytes: number, hashes: Buffer): string {
  const path = storage.chunkHashPath(vmId, diskId, seq);
  storage.indexes.forgetCached(path);
  writeChunkHashFile(`${path}.partial`, { digest: storage.indexDigest, chunkBytes, sizeBytes, hashes });
  renameSync(`${path}.partial`, path);
  return path;
}
