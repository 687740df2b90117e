import { Worker } from "node:worker_threads";
import { BLAKE3_MISSING, blake3ModulePath, type ChunkDigestName } from "./chunkDigest.js";

/** One slot's digests. */
export interface SlotDigests {
  /** The slot's digests, 32 bytes per chunk, in shared memory: valid until the slot is hashed again. */
  digests: Buffer;
  /** Time the worker spent hashing (ms). */
  hashMs: number;
}

/** How a slot is cut and digested: chunks of `chunkBytes` (at least MIN_CHUNK_BYTES), each digested with `digest`. */
export interface HashScheme {
  chunkBytes: number;
  digest: ChunkDigestName;
}

/** The smallest chunk a slot is digested in: bounds the shared digest memory (32 bytes per chunk). */
export const MIN_CHUNK_BYTES = 4096;

// Plain JavaScript evaluated in the worker: no TypeScript loader is needed there (bin/ and tsx alike).
// BLAKE3's addon loads as the thread starts, so that neither waits for the other's first use.
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { data, digests, slotBytes, minChunkBytes, blake3Path } = workerData;
const blake3 = blake3Path ? require(blake3Path).blake3 : undefined;
const memory = Buffer.from(data);
const out = Buffer.from(digests);
const zeroes = new Map();
const zeroDigests = new Map();
parentPort.on("message", (m) => {
  const t = performance.now();
  const { chunkBytes, digest } = m;
  const digestOf = (chunk) => (digest === "blake3" ? blake3(chunk) : createHash("sha256").update(chunk).digest());
  let zero = zeroes.get(chunkBytes);
  if (!zero) zeroes.set(chunkBytes, (zero = Buffer.alloc(chunkBytes)));
  const base = m.slot * slotBytes;
  let at = m.slot * (slotBytes / minChunkBytes) * 32;
  for (let off = 0; off < m.length; off += chunkBytes, at += 32) {
    const n = Math.min(chunkBytes, m.length - off);
    const chunk = memory.subarray(base + off, base + off + n);
    // A zero chunk's digest is a constant: comparing with zeroes runs at memory speed, far above hashing.
    let d;
    if (chunk.equals(zero.subarray(0, n))) {
      const key = digest + ":" + n;
      d = zeroDigests.get(key);
      if (!d) zeroDigests.set(key, (d = digestOf(chunk)));
    } else {
      d = digestOf(chunk);
    }
    d.copy(out, at);
  }
  parentPort.postMessage({ slot: m.slot, ms: performance.now() - t });
});
`;

/**
 * Chunk digests computed by one worker thread over memory shared with the caller: reads land in a
 * slot of a SharedArrayBuffer and the worker hashes them there, so the main thread keeps parsing
 * NBD replies while the last read is hashed on the other core. Nothing moves between the threads
 * but a slot number and a time: transferring the read buffers instead (hashPool.ts) cost more in
 * detaching, re-wrapping and garbage than the hashing saved, and hashing on the reading thread
 * makes reading and hashing take turns.
 */
export class SharedChunkHasher {
  private readonly worker: Worker;
  private readonly data: SharedArrayBuffer;
  private readonly digestMemory: SharedArrayBuffer;
  private readonly waiting = new Map<number, { resolve: (d: SlotDigests) => void; reject: (e: Error) => void; chunks: number }>();
  private failure: Error | undefined;
  private readonly digestsPerSlot: number;
  private readonly blake3: boolean;

  /**
   * `slots` buffers of `slotBytes` (a multiple of MIN_CHUNK_BYTES). The thread starts now, before
   * the scheme is known: a resync starts it at its cut-off, so that its ~60-140 ms of start-up
   * (measured: isolate, then BLAKE3's addon) overlap the wait for the replica's first hashes.
   */
  constructor(
    readonly slots: number,
    readonly slotBytes: number,
  ) {
    if (slotBytes % MIN_CHUNK_BYTES !== 0) throw new Error(`hash slot of ${slotBytes} bytes is not a whole number of ${MIN_CHUNK_BYTES}-byte chunks`);
    const blake3Path = blake3ModulePath();
    this.blake3 = blake3Path !== undefined;
    this.digestsPerSlot = slotBytes / MIN_CHUNK_BYTES;
    this.data = new SharedArrayBuffer(slots * slotBytes);
    this.digestMemory = new SharedArrayBuffer(slots * this.digestsPerSlot * 32);
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { data: this.data, digests: this.digestMemory, slotBytes, minChunkBytes: MIN_CHUNK_BYTES, blake3Path },
    });
    this.worker.on("message", (m: { slot: number; ms: number }) => {
      const w = this.waiting.get(m.slot);
      if (!w) return;
      this.waiting.delete(m.slot);
      w.resolve({ digests: Buffer.from(this.digestMemory, m.slot * this.digestsPerSlot * 32, w.chunks * 32), hashMs: m.ms });
    });
    const broken = (err: Error) => {
      this.failure ??= new Error(`the resync's hashing thread stopped (${err.message}); the resync is retried at the next cycle`);
      for (const w of this.waiting.values()) w.reject(this.failure);
      this.waiting.clear();
    };
    this.worker.on("error", broken);
    this.worker.on("exit", (code) => broken(new Error(`exit code ${code}`)));
  }

  /** Slot `slot`'s memory: a read lands here, then hash() digests it in place. */
  buffer(slot: number): Buffer {
    return Buffer.from(this.data, slot * this.slotBytes, this.slotBytes);
  }

  /** Digests of the first `length` bytes of slot `slot`, chunk by chunk; the slot must not be written until it resolves. */
  hash(slot: number, length: number, scheme: HashScheme): Promise<SlotDigests> {
    if (this.failure) return Promise.reject(this.failure);
    const { chunkBytes, digest } = scheme;
    if (!Number.isInteger(chunkBytes) || chunkBytes < MIN_CHUNK_BYTES)
      return Promise.reject(new Error(`chunks of ${chunkBytes} bytes: the hashing thread digests chunks of at least ${MIN_CHUNK_BYTES}`));
    if (length > this.slotBytes) return Promise.reject(new Error(`${length} bytes do not fit a hash slot of ${this.slotBytes}`));
    if (digest === "blake3" && !this.blake3) return Promise.reject(new Error(BLAKE3_MISSING));
    return new Promise((resolve, reject) => {
      this.waiting.set(slot, { resolve, reject, chunks: Math.ceil(length / chunkBytes) });
      this.worker.postMessage({ slot, length, chunkBytes, digest });
    });
  }

  /** Ends the thread; pending hashes reject. */
  async close(): Promise<void> {
    this.worker.removeAllListeners("exit");
    this.failure ??= new Error("the resync's hashing thread was closed");
    for (const w of this.waiting.values()) w.reject(this.failure);
    this.waiting.clear();
    await this.worker.terminate();
  }
}
