import { Worker } from "node:worker_threads";
import { blake3ModulePath, type ChunkDigestName } from "./chunkDigest.js";

/**
 * Chunk digests computed by one worker thread over memory shared with the caller: reads land in a
 * slot of a SharedArrayBuffer and the worker hashes them there, so the main thread keeps parsing
 * NBD replies while the last read is hashed on the other core. Nothing moves between the threads
 * but a slot number and a time: transferring the read buffers instead (hashPool.ts) cost more in
 * detaching, re-wrapping and garbage than the hashing saved, and hashing on the reading thread
 * makes reading and hashing take turns.
 */
export interface SlotDigests {
  /** The slot's digests, 32 bytes per chunk, in shared memory: valid until the slot is hashed again. */
  digests: Buffer;
  /** Time the worker spent hashing (ms). */
  hashMs: number;
}

// Plain JavaScript evaluated in the worker: no TypeScript loader is needed there (bin/ and tsx alike).
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { data, digests, slotBytes, chunkBytes, digest, blake3Path } = workerData;
const blake3 = digest === "blake3" ? require(blake3Path).blake3 : undefined;
const digestOf = (chunk) => (blake3 ? blake3(chunk) : createHash("sha256").update(chunk).digest());
const memory = Buffer.from(data);
const out = Buffer.from(digests);
const zero = Buffer.alloc(chunkBytes);
const zeroDigests = new Map();
const chunksPerSlot = slotBytes / chunkBytes;
parentPort.on("message", (m) => {
  const t = performance.now();
  const base = m.slot * slotBytes;
  let at = m.slot * chunksPerSlot * 32;
  for (let off = 0; off < m.length; off += chunkBytes, at += 32) {
    const n = Math.min(chunkBytes, m.length - off);
    const chunk = memory.subarray(base + off, base + off + n);
    // A zero chunk's digest is a constant: comparing with zeroes runs at memory speed, far above hashing.
    let d;
    if (chunk.equals(zero.subarray(0, n))) {
      d = zeroDigests.get(n);
      if (!d) zeroDigests.set(n, (d = digestOf(chunk)));
    } else {
      d = digestOf(chunk);
    }
    d.copy(out, at);
  }
  parentPort.postMessage({ slot: m.slot, ms: performance.now() - t });
});
`;

export class SharedChunkHasher {
  private readonly worker: Worker;
  private readonly data: SharedArrayBuffer;
  private readonly digestMemory: SharedArrayBuffer;
  private readonly waiting = new Map<number, { resolve: (d: SlotDigests) => void; reject: (e: Error) => void; length: number }>();
  private failure: Error | undefined;
  private readonly chunksPerSlot: number;

  /** `slots` buffers of `slotBytes` (a multiple of `chunkBytes`); BLAKE3 needs its package installed. */
  constructor(
    readonly slots: number,
    readonly slotBytes: number,
    readonly chunkBytes: number,
    digest: ChunkDigestName,
  ) {
    if (slotBytes % chunkBytes !== 0) throw new Error(`hash slot of ${slotBytes} bytes is not a whole number of ${chunkBytes}-byte chunks`);
    const blake3Path = digest === "blake3" ? blake3ModulePath() : undefined;
    if (digest === "blake3" && !blake3Path)
      throw new Error("BLAKE3 is not available on this host (the optional package @napi-rs/blake-hash-linux-x64-gnu is for Linux x86-64 with glibc): use SHA-256");
    this.chunksPerSlot = slotBytes / chunkBytes;
    this.data = new SharedArrayBuffer(slots * slotBytes);
    this.digestMemory = new SharedArrayBuffer(slots * this.chunksPerSlot * 32);
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { data: this.data, digests: this.digestMemory, slotBytes, chunkBytes, digest, blake3Path },
    });
    this.worker.on("message", (m: { slot: number; ms: number }) => {
      const w = this.waiting.get(m.slot);
      if (!w) return;
      this.waiting.delete(m.slot);
      const chunks = Math.ceil(w.length / this.chunkBytes);
      w.resolve({ digests: Buffer.from(this.digestMemory, m.slot * this.chunksPerSlot * 32, chunks * 32), hashMs: m.ms });
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

  /** Digests of the first `length` bytes of slot `slot`; the slot must not be written until it resolves. */
  hash(slot: number, length: number): Promise<SlotDigests> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting.set(slot, { resolve, reject, length });
      this.worker.postMessage({ slot, length });
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
