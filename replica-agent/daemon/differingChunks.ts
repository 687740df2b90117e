import { type HashScheme, SharedChunkHasher, type SlotDigests } from "../../src/common/sharedChunkHasher.js";
import { zeroChunkDigest } from "../../src/common/chunkDigest.js";
import { knownZeroChunks, knownZeroRanges } from "../../src/qemu/nbd/index.js";
import type { CaptureExtent, DiskCycle } from "../capture/index.js";
import { type ComparisonHashes, NOT_YET } from "./comparisonHashes.js";
import { HASH_SLOTS, type PendingUnit, UNIT_BYTES, UnitReads } from "./resyncUnitReads.js";

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
  try {
    const expected = replica.expectedScheme(disk.diskId, disk.sizeAtCutoff);
    if (expected && (yield* compareDisk(disk, replica, stats, sharedHasher, expected, false)) === "compared") return;
    if (expected) stats.schemeRereads = (stats.schemeRereads ?? 0) + 1;
    const waitFrom = performance.now();
    const scheme = await replica.scheme(disk.diskId);
    stats.startWaitMs = (stats.startWaitMs ?? 0) + performance.now() - waitFrom;
    yield* compareDisk(disk, replica, stats, sharedHasher, scheme, true);
  } catch (err) {
    // A read that failed because the cut-off's snapshot broke says so, as the cycle's other reads do.
    throw disk.explainReadError(err);
  }
}

/**
 * One pass over the disk in `scheme`. Unless `confirmed`, read units whose hashes have not come are
 * set aside as digests (deferUntilHashes) and the reads go on; the replica's own scheme is checked
 * before the first comparison: "scheme-differs" when it is another, with every read of this pass
 * settled, nothing yielded and nothing counted.
 */
async function* compareDisk(
  disk: DiskCycle,
  replica: ComparisonHashes,
  stats: ResyncStats,
  sharedHasher: SharedChunkHasher | undefined,
  scheme: HashScheme,
  confirmed: boolean,
): AsyncGenerator<CaptureExtent, "compared" | "scheme-differs"> {
  const unitBytes = scheme.chunkBytes * Math.max(1, Math.floor(UNIT_BYTES / scheme.chunkBytes));
  // Runs QEMU reports as reading zeroes are neither read nor hashed: their hash is a constant.
  const unitIsZero = knownZeroRanges(await knownZeroChunks(disk.clients[0]!, scheme.chunkBytes), scheme.chunkBytes);
  // The cycle's hasher (started at its cut-off, see startResyncHasher) unless this disk's chunks are larger than its slots.
  const ownHasher = !sharedHasher || unitBytes > sharedHasher.slotBytes ? new SharedChunkHasher(HASH_SLOTS, unitBytes) : undefined;
  const hasher = ownHasher ?? sharedHasher!;
  const reads = new UnitReads(disk.clients[0]!, hasher, scheme, unitBytes, disk.sizeAtCutoff, unitIsZero);
  try {
    reads.refill();
    if (!confirmed) {
      const deferred = await deferUntilHashes(reads, replica, disk.diskId, scheme, stats);
      const t = performance.now();
      const theirs = await replica.scheme(disk.diskId);
      stats.startWaitMs = (stats.startWaitMs ?? 0) + performance.now() - t;
      if (theirs.chunkBytes !== scheme.chunkBytes || theirs.digest !== scheme.digest) {
        // Their slots are read into again by the next pass: let every read and hash of this one end.
        await reads.settle();
        return "scheme-differs";
      }
      for (const unit of deferred) yield* compareDeferredUnit(disk, replica, stats, scheme, unit);
    }
    const zero = Buffer.alloc(scheme.chunkBytes);
    while (reads.pending.length > 0) {
      const unit = reads.pending[0]!;
      if (unit.job === undefined) yield* compareZeroUnit(disk.diskId, replica, stats, scheme, unit);
      else yield* compareReadUnit(disk.diskId, replica, stats, scheme, unit, unit.job, hasher.buffer(unit.slot!), zero);
      reads.release(unit);
    }
    return "compared";
  } finally {
    reads.stop();
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

/**
 * Until the replica's first hashes of the disk come (it opens its point meanwhile), units read and
 * hashed keep only their digests and free their slots, so that reading need not wait; at most
 * MAX_DEFERRED_BYTES. Returns them in disk order, to be compared before any later unit.
 */
async function deferUntilHashes(reads: UnitReads, replica: ComparisonHashes, diskId: string, { chunkBytes }: HashScheme, stats: ResyncStats): Promise<DeferredUnit[]> {
  const hashesCame = (u: PendingUnit) => replica.known(diskId, Math.ceil((u.offset + u.length) / chunkBytes) - 1) !== NOT_YET;
  const deferred: DeferredUnit[] = [];
  let deferredBytes = 0;
  while (reads.pending.length > 0) {
    const head = reads.pending[0]!;
    if (hashesCame(head) || deferredBytes + head.length > MAX_DEFERRED_BYTES) break;
    let digests: Buffer | undefined;
    if (head.job !== undefined) {
      const t = performance.now();
      const done = await head.job;
      stats.readWaitMs = (stats.readWaitMs ?? 0) + performance.now() - t;
      // They came while it was read: compared as usual, with no second read.
      if (hashesCame(head)) break;
      stats.hashMs = (stats.hashMs ?? 0) + done.hashMs;
      // A copy: the slot's digests live in shared memory hashed into again.
      digests = Buffer.from(done.digests);
    }
    deferred.push({ offset: head.offset, length: head.length, digests, zeroBytes: head.zeroBytes });
    deferredBytes += head.length;
    reads.release(head);
  }
  return deferred;
}

/** The replica's hash of chunk `index`, awaited when not known yet (rare: they come long before the reads need them). */
async function theirHashLater(replica: ComparisonHashes, diskId: string, index: number, stats: ResyncStats): Promise<Buffer | undefined> {
  const t = performance.now();
  const theirs = await replica.hashAt(diskId, index);
  stats.replicaWaitMs = (stats.replicaWaitMs ?? 0) + performance.now() - t;
  return theirs;
}

/** A unit known to read as zeroes (not read): its chunks differ where the replica's are not zeroes. */
async function* compareZeroUnit(
  diskId: string,
  replica: ComparisonHashes,
  stats: ResyncStats,
  { chunkBytes, digest }: HashScheme,
  unit: { offset: number; length: number },
): AsyncGenerator<CaptureExtent> {
  for (let at = 0; at < unit.length; at += chunkBytes) {
    const n = Math.min(chunkBytes, unit.length - at);
    const index = (unit.offset + at) / chunkBytes;
    const known = replica.known(diskId, index);
    const theirs = known === NOT_YET ? await theirHashLater(replica, diskId, index, stats) : known;
    if (theirs !== undefined && zeroChunkDigest(digest, n).equals(theirs)) continue;
    stats.differingBytes += n;
    yield { kind: "zero", offset: unit.offset + at, length: n };
  }
  stats.knownZeroBytes = (stats.knownZeroBytes ?? 0) + unit.length;
  stats.comparedBytes += unit.length;
}

/** A unit read into `buf` and hashed by `job`: yields its chunks whose digest differs from the replica's. */
async function* compareReadUnit(
  diskId: string,
  replica: ComparisonHashes,
  stats: ResyncStats,
  { chunkBytes }: HashScheme,
  unit: PendingUnit,
  job: Promise<SlotDigests>,
  buf: Buffer,
  zero: Buffer,
): AsyncGenerator<CaptureExtent> {
  const t = performance.now();
  const { digests, hashMs } = await job;
  stats.readWaitMs = (stats.readWaitMs ?? 0) + performance.now() - t;
  stats.hashMs = (stats.hashMs ?? 0) + hashMs;
  stats.comparedBytes += unit.length;
  if (unit.zeroBytes) stats.knownZeroBytes = (stats.knownZeroBytes ?? 0) + unit.zeroBytes;
  for (let i = 0, at = 0; at < unit.length; i++, at += chunkBytes) {
    const n = Math.min(chunkBytes, unit.length - at);
    const chunkOffset = unit.offset + at;
    const known = replica.known(diskId, chunkOffset / chunkBytes);
    const theirs = known === NOT_YET ? await theirHashLater(replica, diskId, chunkOffset / chunkBytes, stats) : known;
    if (theirs !== undefined && theirs.length === 32 && digests.compare(theirs, 0, 32, i * 32, i * 32 + 32) === 0) continue;
    stats.differingBytes += n;
    const chunk = buf.subarray(at, at + n);
    // A copy: the slot is read into again.
    yield chunk.equals(zero.subarray(0, n)) ? { kind: "zero", offset: chunkOffset, length: n } : { kind: "data", offset: chunkOffset, length: n, data: Buffer.from(chunk) };
  }
}

/** Compares a deferred unit with the replica's hashes; a differing chunk that is not zeroes is read again. */
async function* compareDeferredUnit(disk: DiskCycle, replica: ComparisonHashes, stats: ResyncStats, scheme: HashScheme, unit: DeferredUnit): AsyncGenerator<CaptureExtent> {
  if (unit.digests === undefined) {
    yield* compareZeroUnit(disk.diskId, replica, stats, scheme, unit);
    return;
  }
  const { chunkBytes, digest } = scheme;
  stats.comparedBytes += unit.length;
  stats.knownZeroBytes = (stats.knownZeroBytes ?? 0) + unit.zeroBytes;
  for (let i = 0, at = 0; at < unit.length; i++, at += chunkBytes) {
    const n = Math.min(chunkBytes, unit.length - at);
    const offset = unit.offset + at;
    const known = replica.known(disk.diskId, offset / chunkBytes);
    const theirs = known === NOT_YET ? await theirHashLater(replica, disk.diskId, offset / chunkBytes, stats) : known;
    const ours = unit.digests.subarray(i * 32, i * 32 + 32);
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
