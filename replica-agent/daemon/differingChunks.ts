import { MIN_CHUNK_BYTES, SharedChunkHasher, type SlotDigests } from "../../src/common/sharedChunkHasher.js";
import { zeroChunkDigest, type ChunkDigestName } from "../../src/common/chunkDigest.js";
import { knownZeroChunks, knownZeroRanges, startPieceReads } from "../../src/qemu/nbd/index.js";
import { digestFromWire, resyncChunkBytes } from "../../src/transport/index.js";
import type { ResyncHashes } from "../../src/gen/qreplica/v1/replication.js";
import type { CaptureExtent, DiskCycle } from "../capture/index.js";

export interface ResyncStats {
  /** Bytes of the disk compared here: read and hashed, or known to be zeroes (knownZeroBytes). */
  comparedBytes: number;
  /** Of comparedBytes, those QEMU reported as reading zeroes (base:allocation): not read, and their hash is a constant (not computed). */
  knownZeroBytes?: number;
  /** Bytes whose chunk hash differed from the replica's: what travels (as data or zeroes). */
  differingBytes: number;
  /** Where the time went: waiting for reads and their hashing, hashing alone (in place or worker time), waiting for the replica's hashes (ms). */
  readWaitMs?: number;
  /**
   * Waiting for the replica's first hashes (its chunk size and digest): before the disk's first read,
   * or, reading in the scheme HelloAck named, before its first comparison (ms).
   */
  startWaitMs?: number;
  /** Disks read again because the replica's first hashes came in another scheme than HelloAck named. */
  schemeRereads?: number;
  /** Bytes compared before the replica's hashes came (digests kept) and then found to differ: read twice. */
  rereadBytes?: number;
  hashMs?: number;
  replicaWaitMs?: number;
}

/**
 * A read unit: this many bytes (whole chunks, at least one), hashed together (one message to the
 * hashing thread) and read as READ_PIECE_BYTES requests. 4 MiB units of 512 KiB pieces, 4 units in
 * flight (32 READs), 6 slots: see READ_PIECE_BYTES for the measurements.
 */
const UNIT_BYTES = 4 * 1024 * 1024;
const READS_IN_FLIGHT = 4;
/**
 * One READ's size. Measured reading and hashing 4 GiB of the benchmark's mix from a
 * qemu-storage-daemon export (disk qcow2 under a fleece overlay, as the agent builds it), as CPU-s
 * of the agent and QEMU together (2026-12-05, load 6-20, niced, 10 interleaved pairs of passes):
 * 512 KiB pieces of 4 MiB units, 4 units in flight, 4.83 CPU-s (median; agent 2.75, QEMU 2.02)
 * against 6.84 (agent 3.89, QEMU 2.95) for the 192 KiB pieces of 1 MiB units, 16 in flight, used
 * before; every pair cheaper. QEMU switched context ~31k times against ~53k: each READ costs it a handoff to
 * its I/O thread pool and back whatever its size, while a reply larger than its socket's send
 * buffer (208 KiB) costs no extra wakeups per byte. 384 and 768 KiB measured alike; 1 MiB pieces
 * make QEMU's allocator fault in every page of every request buffer (a million page faults, 16
 * CPU-s), and so does keeping fewer READs in flight (16 of 512 KiB: 110k faults, QEMU 3.8 CPU-s):
 * QEMU's heap top is trimmed whenever its request buffers are all freed at once.
 */
const READ_PIECE_BYTES = 512 * 1024;
/**
 * Read units held at once (4 MiB each, shared with the hashing thread): those being read plus those
 * read and waiting for (or in) the hashing.
 */
const HASH_SLOTS = 6;
/**
 * Until the replica's first hashes of a disk come (while it opens its point), read units are
 * hashed and their digests kept, up to this many bytes, so that reading need not wait; a chunk
 * then found to differ is read a second time.
 */
const MAX_DEFERRED_BYTES = 256 * 1024 * 1024;

/**
 * The hashing thread of a resync cycle, started at its cut-off so that its start-up overlaps the
 * wait for the replica's first hashes (every disk of the cycle then uses it; close it after).
 */
export function startResyncHasher(): SharedChunkHasher {
  return new SharedChunkHasher(HASH_SLOTS, UNIT_BYTES);
}

/** ComparisonHashes.known: the replica's hash of that chunk has not arrived yet. */
export const NOT_YET: unique symbol = Symbol("not yet");

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

  /** @param expectedDigest the digest HelloAck named (undefined: an older site, wait for its hashes). */
  constructor(private readonly expectedDigest?: ChunkDigestName) {}

  /**
   * The scheme to read a disk in before the replica's hashes confirm it: theirs once known, else the
   * shared chunk size with the digest HelloAck named; undefined when neither is known.
   */
  expectedScheme(diskId: string, sizeBytes: number): { chunkBytes: number; digest: ChunkDigestName } | undefined {
    const d = this.disks.get(diskId);
    if (d) return { chunkBytes: d.chunkBytes, digest: d.digest };
    return this.expectedDigest ? { chunkBytes: resyncChunkBytes(sizeBytes), digest: this.expectedDigest } : undefined;
  }

  add(h: ResyncHashes): void {
    const digest = digestFromWire(h.digest);
    if (!digest) {
      this.fail(new Error(`the replica compares disk ${h.diskId} with chunk digest ${h.digest}, which this agent does not know: upgrade the agent`));
      return;
    }
    if (!Number.isInteger(h.chunkBytes / MIN_CHUNK_BYTES) || h.chunkBytes <= 0) {
      this.fail(new Error(`the replica compares disk ${h.diskId} in chunks of ${h.chunkBytes} bytes, not a multiple of ${MIN_CHUNK_BYTES}`));
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

  /**
   * The replica's hash of chunk `index` if known now (undefined past the end of its image), else
   * NOT_YET: the hashes arrive long before the reads need them, and awaiting each of a disk's
   * tens of thousands of chunks cost the reading thread a promise round trip apiece.
   */
  known(diskId: string, index: number): Buffer | undefined | typeof NOT_YET {
    if (this.failure) throw this.failure;
    const d = this.disks.get(diskId);
    if (d && index < d.hashes.length) return d.hashes[index];
    return d?.done ? undefined : NOT_YET;
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
 * Resynchronisation by comparison: reads the disk at the cut-off in the replica's chunk size and
 * yields only the chunks whose digest differs from the replica's (all-zero ones as zeroes).
 * Chunks that QEMU's base:allocation reports as zeroes are not read: their hash is a constant.
 * Reads land in memory shared with one hashing thread (src/common/sharedChunkHasher.ts), which
 * digests each read unit while the main thread parses the next replies: hashing on the reading
 * thread made the two take turns (measured: reading alone took half the time of reading + hashing).
 * The digest is the replica's pick among those offered in Hello (src/common/chunkDigest.ts). When
 * HelloAck named it, reading starts at once in the shared chunk size (src/transport/resyncChunks.ts)
 * rather than after the replica has opened its point and sent its first hashes; should those come
 * in another scheme, the disk is read again in theirs.
 */
export async function* differingChunks(disk: DiskCycle, replica: ComparisonHashes, stats: ResyncStats, sharedHasher?: SharedChunkHasher): AsyncGenerator<CaptureExtent> {
  if (disk.clients.length === 0) throw new Error(`disk ${disk.diskId}: no NBD connection for the resync read`);
  const expected = replica.expectedScheme(disk.diskId, disk.sizeAtCutoff);
  if (expected && (yield* compareDisk(disk, replica, stats, sharedHasher, expected, false)) === "compared") return;
  if (expected) stats.schemeRereads = (stats.schemeRereads ?? 0) + 1;
  const waitFrom = performance.now();
  const scheme = await replica.scheme(disk.diskId);
  stats.startWaitMs = (stats.startWaitMs ?? 0) + performance.now() - waitFrom;
  yield* compareDisk(disk, replica, stats, sharedHasher, scheme, true);
}

/**
 * One pass over the disk in `scheme`. Unless `confirmed`, read units whose hashes have not come are
 * set aside as digests (DeferredUnit, up to MAX_DEFERRED_BYTES) and the reads go on; the replica's
 * own scheme is checked before the first comparison: "scheme-differs" when it is another, with
 * every read of this pass settled, nothing yielded and nothing counted.
 */
async function* compareDisk(
  disk: DiskCycle,
  replica: ComparisonHashes,
  stats: ResyncStats,
  sharedHasher: SharedChunkHasher | undefined,
  { chunkBytes, digest }: { chunkBytes: number; digest: ChunkDigestName },
  confirmed: boolean,
): AsyncGenerator<CaptureExtent, "compared" | "scheme-differs"> {
  const size = disk.sizeAtCutoff;
  const readBytes = chunkBytes * Math.max(1, Math.floor(UNIT_BYTES / chunkBytes));
  const zero = Buffer.alloc(chunkBytes);
  // Runs QEMU reports as reading zeroes are neither read nor hashed: their hash is a constant.
  const unitIsZero = knownZeroRanges(await knownZeroChunks(disk.clients[0]!, chunkBytes), chunkBytes);
  const theirHash = async (chunkOffset: number) => {
    const t = performance.now();
    const theirs = await replica.hashAt(disk.diskId, chunkOffset / chunkBytes);
    stats.replicaWaitMs = (stats.replicaWaitMs ?? 0) + performance.now() - t;
    return theirs;
  };
  // The cycle's hasher (started at its cut-off, see startResyncHasher) unless this disk's chunks are larger than its slots.
  const ownHasher = !sharedHasher || readBytes > sharedHasher.slotBytes ? new SharedChunkHasher(HASH_SLOTS, readBytes) : undefined;
  const hasher = ownHasher ?? sharedHasher!;
  const scheme = { chunkBytes, digest };
  // Once the caller stops (error, abandoned generator), a read that lands starts no other.
  let stopped = false;
  try {
    // slot undefined: a unit known to read as zeroes, not read. Results are taken in disk order.
    const pending: Array<{ offset: number; length: number; slot?: number; job?: Promise<SlotDigests>; zeroBytes?: number }> = [];
    const free = Array.from({ length: HASH_SLOTS }, (_, i) => i);
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
      const slot = free.pop()!;
      // Read in pieces of READ_PIECE_BYTES, hashed as one unit; a piece known to read as zeroes is
      // zero-filled, not read: the hashing thread then finds its chunks zero without hashing them.
      reading++;
      const unit = startPieceReads(client, offset, length, hasher.buffer(slot), { pieceBytes: READ_PIECE_BYTES, isZero: unitIsZero });
      const job = unit.done.then(() => {
        reading--;
        refill();
        return hasher.hash(slot, length, scheme);
      });
      job.catch(() => undefined);
      pending.push({ offset, length, slot, job, zeroBytes: unit.zeroBytes });
    };
    const refill = () => {
      while (!stopped && next < size && free.length > 0 && reading < READS_IN_FLIGHT && pending.length < HASH_SLOTS * 4) issue();
    };
    refill();
    // Units hashed before the replica's first hashes of this disk came: digests kept, slots freed.
    const deferred: DeferredUnit[] = [];
    let deferredBytes = 0;
    let schemeChecked = confirmed;
    const hashesCame = (offset: number, length: number) => replica.known(disk.diskId, Math.ceil((offset + length) / chunkBytes) - 1) !== NOT_YET;
    while (pending.length > 0) {
      const head = pending[0]!;
      if (!schemeChecked && !hashesCame(head.offset, head.length) && deferredBytes + head.length <= MAX_DEFERRED_BYTES) {
        let digests: Buffer | undefined;
        if (head.job !== undefined) {
          const t = performance.now();
          const done = await head.job;
          stats.readWaitMs = (stats.readWaitMs ?? 0) + performance.now() - t;
          // They came while it was read: compared as usual, with no second read.
          if (hashesCame(head.offset, head.length)) continue;
          stats.hashMs = (stats.hashMs ?? 0) + done.hashMs;
          // A copy: the slot's digests live in shared memory hashed into again.
          digests = Buffer.from(done.digests);
          free.push(head.slot!);
        }
        deferred.push({ offset: head.offset, length: head.length, digests, zeroBytes: head.job === undefined ? head.length : (head.zeroBytes ?? 0) });
        deferredBytes += head.length;
        pending.shift();
        refill();
        continue;
      }
      if (!schemeChecked) {
        const t = performance.now();
        const theirs = await replica.scheme(disk.diskId);
        stats.startWaitMs = (stats.startWaitMs ?? 0) + performance.now() - t;
        if (theirs.chunkBytes !== chunkBytes || theirs.digest !== digest) {
          // Their slots are read into again by the next pass: let every read and hash of this one end.
          stopped = true;
          await Promise.allSettled(pending.map((p) => p.job));
          return "scheme-differs";
        }
        schemeChecked = true;
        for (const unit of deferred.splice(0)) yield* compareDeferredUnit(disk, replica, stats, { chunkBytes, digest }, unit);
      }
      break;
    }
    while (pending.length > 0) {
      const { offset, length, slot, job, zeroBytes } = pending[0]!;
      if (slot === undefined || job === undefined) {
        for (let at = 0; at < length; at += chunkBytes) {
          const n = Math.min(chunkBytes, length - at);
          let theirs = replica.known(disk.diskId, (offset + at) / chunkBytes);
          if (theirs === NOT_YET) theirs = await theirHash(offset + at);
          if (theirs !== undefined && zeroChunkDigest(digest, n).equals(theirs)) continue;
          stats.differingBytes += n;
          yield { kind: "zero", offset: offset + at, length: n };
        }
        stats.knownZeroBytes = (stats.knownZeroBytes ?? 0) + length;
        stats.comparedBytes += length;
        pending.shift();
        refill();
        continue;
      }
      const t = performance.now();
      const { digests, hashMs } = await job;
      stats.readWaitMs = (stats.readWaitMs ?? 0) + performance.now() - t;
      stats.hashMs = (stats.hashMs ?? 0) + hashMs;
      stats.comparedBytes += length;
      if (zeroBytes) stats.knownZeroBytes = (stats.knownZeroBytes ?? 0) + zeroBytes;
      const buf = hasher.buffer(slot);
      for (let i = 0, at = 0; at < length; i++, at += chunkBytes) {
        const n = Math.min(chunkBytes, length - at);
        const chunkOffset = offset + at;
        let theirs = replica.known(disk.diskId, chunkOffset / chunkBytes);
        if (theirs === NOT_YET) theirs = await theirHash(chunkOffset);
        if (theirs !== undefined && theirs.length === 32 && digests.compare(theirs, 0, 32, i * 32, i * 32 + 32) === 0) continue;
        stats.differingBytes += n;
        const chunk = buf.subarray(at, at + n);
        // A copy: the slot is read into again.
        yield chunk.equals(zero.subarray(0, n)) ? { kind: "zero", offset: chunkOffset, length: n } : { kind: "data", offset: chunkOffset, length: n, data: Buffer.from(chunk) };
      }
      pending.shift();
      free.push(slot);
      refill();
    }
    if (!schemeChecked) {
      // Every unit was deferred (a small disk, or the replica slower than the whole read).
      const theirs = await replica.scheme(disk.diskId);
      if (theirs.chunkBytes !== chunkBytes || theirs.digest !== digest) return "scheme-differs";
      for (const unit of deferred.splice(0)) yield* compareDeferredUnit(disk, replica, stats, { chunkBytes, digest }, unit);
    }
    return "compared";
  } finally {
    stopped = true;
    await ownHasher?.close();
  }
}

/** A read unit hashed before the replica's hashes came: its digests (undefined: known to read as zeroes). */
interface DeferredUnit {
  offset: number;
  length: number;
  digests?: Buffer;
  /** Of length, the bytes known to read as zeroes (not read). */
  zeroBytes: number;
}

/** Compares a deferred unit with the replica's hashes; a differing chunk that is not zeroes is read again. */
async function* compareDeferredUnit(
  disk: DiskCycle,
  replica: ComparisonHashes,
  stats: ResyncStats,
  { chunkBytes, digest }: { chunkBytes: number; digest: ChunkDigestName },
  unit: DeferredUnit,
): AsyncGenerator<CaptureExtent> {
  stats.comparedBytes += unit.length;
  stats.knownZeroBytes = (stats.knownZeroBytes ?? 0) + unit.zeroBytes;
  for (let i = 0, at = 0; at < unit.length; i++, at += chunkBytes) {
    const n = Math.min(chunkBytes, unit.length - at);
    const offset = unit.offset + at;
    const theirs = await replica.hashAt(disk.diskId, offset / chunkBytes);
    const ours = unit.digests ? unit.digests.subarray(i * 32, i * 32 + 32) : zeroChunkDigest(digest, n);
    if (theirs !== undefined && ours.equals(theirs)) continue;
    stats.differingBytes += n;
    if (ours.equals(zeroChunkDigest(digest, n))) {
      yield { kind: "zero", offset, length: n };
      continue;
    }
    stats.rereadBytes = (stats.rereadBytes ?? 0) + n;
    yield { kind: "data", offset, length: n, data: await disk.clients[0]!.read(offset, n) };
  }
}
