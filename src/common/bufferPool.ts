/**
 * Reused multi-MiB buffers for hot paths that would otherwise allocate one per chunk: a fresh
 * large buffer costs page faults on first touch and external-memory pressure that makes V8 run
 * full garbage collections. Buffers are sized in `granule` steps so chunks of similar sizes
 * share them; at most `keep` idle ones are held, and `clear()` lets them all go.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(
    private readonly granule = 1024 * 1024,
    private readonly keep = 16,
  ) {}

  /** A buffer of at least `length` bytes; its contents are garbage. */
  take(length: number): Buffer {
    // The smallest that fits (the newest of equals): a small request must not take a large buffer
    // that a large one then has to allocate again.
    let best = -1;
    for (let i = this.free.length - 1; i >= 0; i--) {
      const b = this.free[i]!;
      if (b.length >= length && (best < 0 || b.length < this.free[best]!.length)) best = i;
    }
    if (best >= 0) return this.free.splice(best, 1)[0]!;
    return Buffer.allocUnsafeSlow(Math.max(this.granule, Math.ceil(length / this.granule) * this.granule));
  }

  /** Returns a buffer from `take`; the caller must not touch it afterwards. */
  give(buf: Buffer): void {
    if (this.free.length < this.keep) this.free.push(buf);
  }

  clear(): void {
    this.free.length = 0;
  }

  get idle(): number {
    return this.free.length;
  }
}
