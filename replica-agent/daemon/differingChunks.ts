import { createHash } from "node:crypto";
import type { CaptureExtent, DiskCycle } from "../capture/index.js";

export interface ResyncStats {
  comparedBytes: number;
  differingBytes: number;
}

/**
 * Resynchronisation by comparison: reads the disk at the cut-off in the replica's chunk size and
 * yields only the chunks whose SHA-256 differs from the replica's seed (all-zero ones as zeroes).
 */
export async function* differingChunks(disk: DiskCycle, chunkBytes: number, seedHashes: readonly Buffer[], stats: ResyncStats): AsyncGenerator<CaptureExtent> {
  const client = disk.clients[0];
  if (!client) throw new Error(`disk ${disk.diskId}: no NBD connection for the resync read`);
  const size = disk.sizeAtCutoff;
  const zero = Buffer.alloc(chunkBytes);
  const pending: Array<{ offset: number; data: Promise<Buffer> }> = [];
  let next = 0;
  const issue = () => {
    const offset = next;
    const length = Math.min(chunkBytes, size - offset);
    next += length;
    const data = client.read(offset, length);
    data.catch(() => undefined);
    pending.push({ offset, data });
  };
  while (next < size && pending.length < 32) issue();
  while (pending.length > 0) {
    const { offset, data } = pending.shift()!;
    const buf = await data;
    if (next < size) issue();
    stats.comparedBytes += buf.length;
    const seed = seedHashes[offset / chunkBytes];
    if (seed && createHash("sha256").update(buf).digest().equals(seed)) continue;
    stats.differingBytes += buf.length;
    yield buf.equals(zero.subarray(0, buf.length)) ? { kind: "zero", offset, length: buf.length } : { kind: "data", offset, length: buf.length, data: buf };
  }
}
