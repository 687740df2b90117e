import { type HashScheme, MIN_CHUNK_BYTES } from "../../src/common/sharedChunkHasher.js";
import type { ChunkDigestName } from "../../src/common/chunkDigest.js";
import { digestFromWire, resyncChunkBytes } from "../../src/transport/index.js";
import type { ResyncHashes } from "../../src/gen/qreplica/v1/replication.js";

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
  expectedScheme(diskId: string, sizeBytes: number): HashScheme | undefined {
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
  async scheme(diskId: string): Promise<HashScheme> {
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
