import { existsSync, openSync, closeSync, ftruncateSync, readFileSync, rmSync, writeSync } from "node:fs";
import { runTool } from "../src/qemu/processes/runTool.js";
import { buildCounterBootSector } from "./build.js";
import { GuestDiskError } from "./errors.js";
import { COUNTER_OFFSET, encodeCounterRecord, type CounterRecord } from "./record.js";

const MiB = 1024 * 1024;

export interface CounterDiskOptions {
  /** Virtual size (default 64 MiB). */
  sizeMiB?: number;
  /** A boot sector to use instead of building counter.asm (must be exactly 512 bytes). */
  bootSectorPath?: string;
  /**
   * Pre-seeds LBA 1 (the guest then starts from this counter). Without it LBA 1 stays zero and
   * the guest starts at counter 0, boot 1.
   */
  initialRecord?: CounterRecord;
}

export interface CounterDisk {
  path: string;
  sizeBytes: number;
  bootSectorPath: string;
}

/**
 * Creates a qcow2 (compat 1.1) disk whose sector 0 is the counter guest's boot sector: a sparse
 * raw image is written next to `path`, then converted (`qemu-img convert -O qcow2`) and removed.
 * Sectors 0 and 1 share the first qcow2 cluster, which the conversion allocates, so the guest's
 * counter writes on this image never allocate metadata. Refuses to overwrite an existing file.
 */
export async function makeCounterDisk(path: string, opts: CounterDiskOptions = {}): Promise<CounterDisk> {
  const sizeMiB = opts.sizeMiB ?? 64;
  if (!Number.isInteger(sizeMiB) || sizeMiB < 1) throw new GuestDiskError(path, `sizeMiB must be a positive integer, got ${sizeMiB}`);
  if (existsSync(path)) throw new GuestDiskError(path, "already exists; remove it or choose another path");
  const bootSectorPath = opts.bootSectorPath ?? (await buildCounterBootSector()).path;
  const boot = readFileSync(bootSectorPath);
  if (boot.length !== 512) throw new GuestDiskError(path, `boot sector ${bootSectorPath} is ${boot.length} bytes, expected 512`);

  const raw = `${path}.raw.tmp`;
  const sizeBytes = sizeMiB * MiB;
  try {
    const fd = openSync(raw, "w");
    try {
      ftruncateSync(fd, sizeBytes);
      writeSync(fd, boot, 0, boot.length, 0);
      if (opts.initialRecord) {
        const rec = encodeCounterRecord(opts.initialRecord);
        writeSync(fd, rec, 0, rec.length, COUNTER_OFFSET);
      }
    } finally {
      closeSync(fd);
    }
    await runTool("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", raw, path]);
  } catch (err) {
    rmSync(path, { force: true });
    throw err instanceof GuestDiskError ? err : new GuestDiskError(path, `cannot create the counter disk: ${(err as Error).message}`, { cause: err });
  } finally {
    rmSync(raw, { force: true });
  }
  return { path, sizeBytes, bootSectorPath };
}
