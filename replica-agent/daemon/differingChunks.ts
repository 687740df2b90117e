import { hashChunks, type HashedBuffer } from "../../src/common/hashPool.js";
import { chunkDigest, zeroChunkDigest, type ChunkDigestName } from "../../src/common/chunkDigest.js";
import { knownZeroChunks, readInPieces } from "../../src/qemu/nbd/index.js";
import { digestFromWire } from "../../src/transport/index.js";
import type { ResyncHashes } from "../../src/gen/qreplica/v1/replication.js";
import type { CaptureExtent, DiskCycle } from "../capture/index.js";

export interface ResyncStats {
  /** Bytes of the disk compared here: read and hashed, or known to be zeroes (knownZeroBytes). */
  comparedBytes: number;
  /** Of comparedBytes, those QEMU reported as reading zeroes (base:allocation): neither read nor hashed, their hash is a constant. */
  knownZeroBytes?: number;
  /** Bytes whose chunk hash differed from the replica's: what travels (as data or zeroes). */
  differingBytes: number;
  /** Where the time went: waiting for reads and their hashing, hashing alone (in place or worker time), waiting for the replica's hashes (ms). */
  readWaitMs?: number;
  hashMs?: number;
  replicaWaitMs?: number;
}

/** A read unit covers this many chunks (hashed together: one message to a worker thread for SHA-256). */
const CHUNKS_PER_READ = 16;
const READS_IN_FLIGHT = 16;

interface DiskHashes {
  chunkBytes: number;
  digest: ChunkDigestName;
  hashes: Buffer[];
  done: boolean;
}

/**
 * The replica's chunk hashes as they stream in (ResyncHashes, disk after disk), so the disk is
 * read and compared while the replica is still hashing its side rather than after it.
 */
export class ComparisonHashes {
  private readonly disks = new Map<string, DiskHashes>();
  private waiters: Array<() => void> = [];
  private failure: Error | undefined;

  add(h: ResyncHashes): void {
    const digest = digestFromWire(h.digest);
    if (!digest) {
      this.fail(new Error(`the replica compares disk ${h.diskId} with chunk digest ${h.digest}, which this agent does not know: upgrade the agent`));
      return;
    }
    const entry = this.disks.get(h.diskId) ?? { chunkBytes: h.chunkBytes, digest, hashes: [], done: false };
    if (Number(h.firstChunk) !== entry.hashes.length) {
      this.fail(new Error(`the replica's hashes of disk ${h.diskId} arrived out of order (chunk ${h.firstChunk}, expected ${entry.hashes.length})`));
      return;
    }
    for (const x of h.hashes) entry.hashes.push(x);
    entry.done = h.last;
    this.disks.set(h.diskId, entry);
    this.wake();
  }

  /** Every waiting and future read fails: the stream broke or the cycle was refused. */
  fail(err: Error): void {
    this.failure ??= err;
    this.wake();
  }

  complete(diskIds: readonly string[]): boolean {
    return diskIds.every((id) => this.disks.get(id)?.done);
  }

  /** The chunk size and digest the replica compares `diskId` with (known from its first ResyncHashes). */
  async scheme(diskId: string): Promise<{ chunkBytes: number; digest: ChunkDigestName }> {
    for (;;) {
      if (this.failure) throw this.failure;
      const d = this.disks.get(diskId);
      if (d) return { chunkBytes: d.chunkBytes, digest: d.digest };
      await this.next();
    }
  }

  /** The replica's hash of chunk `index`, or undefined past the end of its image. */
  async hashAt(diskId: string, index: number): Promise<Buffer | undefined> {
    for (;;) {
      if (this.failure) throw this.failure;
      const d = this.disks.get(diskId);
      if (d && index < d.hashes.length) return d.hashes[index];
      if (d?.done) return undefined;
      await this.next();
    }
  }

  private next(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

/**
 * BLAKE3 digests of a read unit on this thread. Handing 1 MiB units to worker threads cost more
 * than the hashing saved: the agent spent 2.1-2.9 CPU-s per 4 GiB resync that way against 1.5-1.8
 * in place (postMessage, garbage), and the hashing itself (~4 GB/s) keeps pace with the reads.
 * A zero chunk's digest is a constant: comparing with zeroes runs at memory speed.
 */
function hashInPlace(into: Buffer, length: number, chunkBytes: number, zero: Buffer): HashedBuffer {
  const t = performance.now();
  const hashes: Buffer[] = [];
  for (let at = 0; at < length; at += chunkBytes) {
    const chunk = into.subarray(at, Math.min(at + chunkBytes, length));
    hashes.push(chunk.equals(zero.subarray(0, chunk.length)) ? zeroChunkDigest("blake3", chunk.length) : chunkDigest("blake3", chunk));
  }
  return { data: into.subarray(0, length), hashes, hashMs: performance.now() - t };
}

/**
 * Resynchronisation by comparison: reads the disk at the cut-off in the replica's chunk size and
 * yields only the chunks whose digest differs from the replica's (all-zero ones as zeroes).
 * Chunks that QEMU's base:allocation reports as zeroes are not read: their hash is a constant.
 * BLAKE3 is computed as each read lands, SHA-256 (3x slower) in worker threads (src/common/hashPool.ts)
 * while further reads are in flight.
 * The digest is the replica's pick among those offered in Hello (src/common/chunkDigest.ts).
 */
export async function* differingChunks(disk: DiskCycle, replica: ComparisonHashes, stats: ResyncStats): AsyncGenerator<CaptureExtent> {
  if (disk.clients.length === 0) throw new Error(`disk ${disk.diskId}: no NBD connection for the resync read`);
  const { chunkBytes, digest } = await replica.scheme(disk.diskId);
  const size = disk.sizeAtCutoff;
  const readBytes = chunkBytes * CHUNKS_PER_READ;
  const zero = Buffer.alloc(chunkBytes);
  // Runs QEMU reports as reading zeroes are neither read nor hashed: their hash is a constant.
  const knownZero = await knownZeroChunks(disk.clients[0]!, chunkBytes);
  const unitIsZero = (offset: number, length: number) => {
    if (!knownZero) return false;
    for (let i = offset / chunkBytes; i * chunkBytes < offset + length; i++) if (knownZero[i] !== 1) return false;
    return true;
  };
  // data undefined: a unit known to read as zeroes, not read.
  // A read is hashed as soon as it lands (a worker for SHA-256), so reads and hashing overlap; results are
  // taken in disk order.
  const pending: Array<{ offset: number; length: number; job?: Promise<HashedBuffer> }> = [];
  // Read buffers go round: fresh 1 MiB allocations per read cost more in GC than the hashing.
  const free: Buffer[] = [];
  let next = 0;
  let reading = 0;
  const issue = () => {
    const offset = next;
    const length = Math.min(readBytes, size - offset);
    next += length;
    if (unitIsZero(offset, length)) {
      pending.push({ offset, length });
      return;
    }
    // One connection: QEMU serves every connection of an export from one thread, and here more
    // connections cost it more CPU without reading faster (4 against 1 in paired resync runs: 3.5x
    // against 4.2x, QEMU 1.9-2.7 against 1.4-1.9 CPU-s per 4 GiB).
    const client = disk.clients[0]!;
    // Its own ArrayBuffer (never Buffer's shared pool): for SHA-256 it moves to a hashing worker and back.
    const into = free.pop() ?? Buffer.allocUnsafeSlow(readBytes);
    // Read in pieces of EFFICIENT_READ_BYTES (what QEMU serves most cheaply), hashed as one unit.
    const job = readInPieces(client, offset, length, into).then(() =>
      digest === "blake3" ? hashInPlace(into, length, chunkBytes, zero) : hashChunks(into.buffer as ArrayBuffer, length, chunkBytes, digest),
    );
    job.catch(() => undefined);
    reading++;
    pending.push({ offset, length, job });
  };
  while (next < size && reading < READS_IN_FLIGHT) issue();
  while (pending.length > 0) {
    const { offset, length, job } = pending[0]!;
    if (job === undefined) {
      for (let at = 0; at < length; at += chunkBytes) {
        const n = Math.min(chunkBytes, length - at);
        const t = performance.now();
        const theirs = await replica.hashAt(disk.diskId, (offset + at) / chunkBytes);
        stats.replicaWaitMs = (stats.replicaWaitMs ?? 0) + performance.now() - t;
        if (theirs !== undefined && zeroChunkDigest(digest, n).equals(theirs)) continue;
        stats.differingBytes += n;
        yield { kind: "zero", offset: offset + at, length: n };
      }
      stats.knownZeroBytes = (stats.knownZeroBytes ?? 0) + length;
      stats.comparedBytes += length;
      pending.shift();
      while (next < size && reading < READS_IN_FLIGHT) issue();
      continue;
    }
    let t = performance.now();
    const { data: buf, hashes, hashMs } = await job;
    stats.readWaitMs = (stats.readWaitMs ?? 0) + performance.now() - t;
    stats.hashMs = (stats.hashMs ?? 0) + hashMs;
    stats.comparedBytes += buf.length;
    for (let i = 0, at = 0; at < buf.length; i++, at += chunkBytes) {
      const chunk = buf.subarray(at, Math.min(at + chunkBytes, buf.length));
      const chunkOffset = offset + at;
      t = performance.now();
      const theirs = await replica.hashAt(disk.diskId, chunkOffset / chunkBytes);
      stats.replicaWaitMs = (stats.replicaWaitMs ?? 0) + performance.now() - t;
      if (theirs !== undefined && hashes[i]!.equals(theirs)) continue;
      stats.differingBytes += chunk.length;
      // A copy: the read buffer is reused for a later read.
      yield chunk.equals(zero.subarray(0, chunk.length))
        ? { kind: "zero", offset: chunkOffset, length: chunk.length }
        : { kind: "data", offset: chunkOffset, length: chunk.length, data: Buffer.from(chunk) };
    }
    pending.shift();
    // The memory whole (for SHA-256, what came back from the worker): the next read fills it.
    free.push(Buffer.from(buf.buffer, 0, readBytes));
    reading--;
    while (next < size && reading < READS_IN_FLIGHT) issue();
  }
}
