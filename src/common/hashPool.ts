import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { blake3ModulePath, type ChunkDigestName } from "./chunkDigest.js";

/**
 * Digests (SHA-256 or BLAKE3, see chunkDigest.ts) of fixed-size chunks in worker threads, so that a resync's reading (NBD replies parsed on
 * the main thread) and hashing overlap instead of taking turns. The buffer's memory moves to the
 * worker and back (transferred, not copied).
 */
export interface HashedBuffer {
  /** The same bytes, in the memory that came back from the worker (the caller's buffer is detached). */
  data: Buffer;
  /** One 32-byte digest per chunk of `data`, the last chunk possibly shorter. */
  hashes: Buffer[];
  /** Time the worker spent hashing (ms). */
  hashMs: number;
}

// Plain JavaScript evaluated in the worker: no TypeScript loader is needed there (bin/ and tsx alike).
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const blake3 = workerData.blake3Path ? require(workerData.blake3Path).blake3 : undefined;
const digestOf = (name, chunk) => (name === "blake3" ? blake3(chunk) : createHash("sha256").update(chunk).digest());
let zero = Buffer.alloc(0);
const zeroDigests = new Map();
parentPort.on("message", (m) => {
  const t = performance.now();
  const view = Buffer.from(m.memory, 0, m.length);
  const out = Buffer.allocUnsafeSlow(Math.ceil(m.length / m.chunkBytes) * 32);
  if (zero.length < m.chunkBytes) zero = Buffer.alloc(m.chunkBytes);
  let i = 0;
  for (let at = 0; at < m.length; at += m.chunkBytes) {
    const chunk = view.subarray(at, Math.min(at + m.chunkBytes, m.length));
    // A zero chunk's digest is a constant: comparing with zeroes runs at memory speed, far above hashing.
    let digest;
    if (chunk.equals(zero.subarray(0, chunk.length))) {
      const key = m.digest + ":" + chunk.length;
      digest = zeroDigests.get(key);
      if (!digest) zeroDigests.set(key, (digest = digestOf(m.digest, chunk)));
    } else {
      digest = digestOf(m.digest, chunk);
    }
    digest.copy(out, 32 * i++);
  }
  parentPort.postMessage({ id: m.id, memory: m.memory, digests: out.buffer, ms: performance.now() - t }, [m.memory, out.buffer]);
});
`;

interface Job {
  resolve: (r: HashedBuffer) => void;
  reject: (e: Error) => void;
  length: number;
}

interface Slot {
  worker: Worker;
  jobs: Map<number, Job>;
  idle?: NodeJS.Timeout;
}

/** A worker idle this long is ended (a thread and its heap, ~10 MiB): the next hashing starts a new one. */
let idleWorkerMs = 30_000;

/** Tests shorten the idle time; nothing else needs to. */
export function setHashWorkerIdleMs(ms: number): void {
  idleWorkerMs = ms;
}

class HashPool {
  private readonly slots: Slot[] = [];
  private nextId = 0;
  private turn = 0;

  constructor(private readonly size: number) {}

  hash(memory: ArrayBuffer, length: number, chunkBytes: number, digest: ChunkDigestName): Promise<HashedBuffer> {
    const slot = this.slot();
    const id = this.nextId++;
    return new Promise<HashedBuffer>((resolve, reject) => {
      if (slot.jobs.size === 0) slot.worker.ref();
      clearTimeout(slot.idle);
      slot.jobs.set(id, { resolve, reject, length });
      slot.worker.postMessage({ id, memory, length, chunkBytes, digest }, [memory]);
    });
  }

  private slot(): Slot {
    if (this.slots.length < this.size) {
      const slot: Slot = { worker: new Worker(WORKER_SOURCE, { eval: true, workerData: { blake3Path: blake3ModulePath() } }), jobs: new Map() };
      slot.worker.unref();
      slot.worker.on("message", (m: { id: number; memory: ArrayBuffer; digests: ArrayBuffer; ms: number }) => {
        const job = slot.jobs.get(m.id);
        if (!job) return;
        slot.jobs.delete(m.id);
        if (slot.jobs.size === 0) {
          slot.worker.unref();
          slot.idle = setTimeout(() => this.retire(slot), idleWorkerMs).unref();
        }
        const digests = Buffer.from(m.digests);
        const hashes: Buffer[] = [];
        for (let at = 0; at < digests.length; at += 32) hashes.push(digests.subarray(at, at + 32));
        job.resolve({ data: Buffer.from(m.memory, 0, job.length), hashes, hashMs: m.ms });
      });
      const broken = (err: Error) => {
        clearTimeout(slot.idle);
        const i = this.slots.indexOf(slot);
        if (i >= 0) this.slots.splice(i, 1);
        for (const job of slot.jobs.values()) job.reject(new Error(`a hashing worker thread stopped (${err.message}); the resync is retried at the next cycle`));
        slot.jobs.clear();
      };
      slot.worker.on("error", broken);
      slot.worker.on("exit", (code) => broken(new Error(`exit code ${code}`)));
      this.slots.push(slot);
      return slot;
    }
    return this.slots[this.turn++ % this.slots.length]!;
  }

  private retire(slot: Slot): void {
    if (slot.jobs.size > 0) return;
    const i = this.slots.indexOf(slot);
    if (i >= 0) this.slots.splice(i, 1);
    slot.worker.removeAllListeners("exit");
    void slot.worker.terminate();
  }

  get threads(): number {
    return this.slots.length;
  }
}

let pool: HashPool | undefined;

/**
 * The digest of every `chunkBytes` chunk of the first `length` bytes of `memory`, in a worker thread.
 * `memory` must be the caller's own (e.g. Buffer.allocUnsafeSlow's, never Buffer's shared pool): it
 * is detached by the call and comes back as the result's `data`.
 */
export function hashChunks(memory: ArrayBuffer, length: number, chunkBytes: number, digest: ChunkDigestName = "sha256"): Promise<HashedBuffer> {
  pool ??= new HashPool(Math.max(1, Math.min(2, availableParallelism())));
  return pool.hash(memory, length, chunkBytes, digest);
}

/** Worker threads alive now (they end after a while without work). */
export function hashThreads(): number {
  return pool?.threads ?? 0;
}
