import type { HashScheme, SharedChunkHasher, SlotDigests } from "../../src/common/sharedChunkHasher.js";
import { type NbdClient, startPieceReads } from "../../src/qemu/nbd/index.js";

// Reading a disk for a resync: read units land in the hashing thread's slots, several in flight.

/**
 * A read unit: this many bytes (whole chunks, at least one), hashed together (one message to the
 * hashing thread) and read as READ_PIECE_BYTES requests. 4 MiB units of 512 KiB pieces, 4 units in
 * flight (32 READs), 6 slots: see READ_PIECE_BYTES for the measurements.
 */
export const UNIT_BYTES = 4 * 1024 * 1024;
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
export const HASH_SLOTS = 6;

/** A read unit, in disk order. No slot: known to read as zeroes, neither read nor hashed. */
export interface PendingUnit {
  offset: number;
  length: number;
  slot?: number;
  /** Its read, then its hash; with `slot`. */
  job?: Promise<SlotDigests>;
  /** Of length, the bytes known to read as zeroes: zero-filled, not read. */
  zeroBytes: number;
}

/**
 * The reads of one pass over a disk: units are read into free slots of the hashing thread and
 * hashed once read, READS_IN_FLIGHT at a time; `pending` holds them in disk order until the caller
 * releases each.
 */
export class UnitReads {
  readonly pending: PendingUnit[] = [];
  private readonly free = Array.from({ length: HASH_SLOTS }, (_, i) => i);
  private next = 0;
  private reading = 0;
  // Once stopped (the pass ended or was abandoned), a read that lands starts no other.
  private stopped = false;

  constructor(
    private readonly client: NbdClient,
    private readonly hasher: SharedChunkHasher,
    private readonly scheme: HashScheme,
    private readonly unitBytes: number,
    private readonly size: number,
    private readonly isZero: (offset: number, length: number) => boolean,
  ) {}

  /** Starts reads while slots, the in-flight limit and the disk allow. */
  refill(): void {
    while (!this.stopped && this.next < this.size && this.free.length > 0 && this.reading < READS_IN_FLIGHT && this.pending.length < HASH_SLOTS * 4) this.issue();
  }

  /** The head unit is done with: its slot is read into again. */
  release(unit: PendingUnit): void {
    this.pending.shift();
    if (unit.slot !== undefined) this.free.push(unit.slot);
    this.refill();
  }

  /** No read starts any more; resolves once every read and hash started has ended. */
  async settle(): Promise<void> {
    this.stopped = true;
    await Promise.allSettled(this.pending.map((p) => p.job));
  }

  stop(): void {
    this.stopped = true;
  }

  private issue(): void {
    const offset = this.next;
    const length = Math.min(this.unitBytes, this.size - offset);
    this.next += length;
    if (this.isZero(offset, length)) {
      this.pending.push({ offset, length, zeroBytes: length });
      return;
    }
    // One connection: QEMU serves every connection of an export from one thread, and here more
    // connections cost it more CPU without reading faster (4 against 1 in paired resync runs: 3.5x
    // against 4.2x, QEMU 1.9-2.7 against 1.4-1.9 CPU-s per 4 GiB).
    const slot = this.free.pop()!;
    // Read in pieces of READ_PIECE_BYTES, hashed as one unit; a piece known to read as zeroes is
    // zero-filled, not read: the hashing thread then finds its chunks zero without hashing them.
    this.reading++;
    const unit = startPieceReads(this.client, offset, length, this.hasher.buffer(slot), { pieceBytes: READ_PIECE_BYTES, isZero: this.isZero });
    const job = unit.done.then(() => {
      this.reading--;
      this.refill();
      return this.hasher.hash(slot, length, this.scheme);
    });
    job.catch(() => undefined);
    this.pending.push({ offset, length, slot, job, zeroBytes: unit.zeroBytes });
  }
}
