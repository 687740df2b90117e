/**
 * A FIFO of received Buffers read as one byte stream. Chunks are kept by reference and consumed in
 * place, so parsing a long stream never re-concatenates it (no quadratic Buffer.concat) and bulk
 * payload can be copied once, straight into its final destination.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0;
  private headOffset = 0;
  private available = 0;
  private consumedTotal = 0;
  private readonly scratch = Buffer.alloc(8);

  /** Bytes buffered and not yet consumed. */
  get length(): number {
    return this.available;
  }

  /** Bytes consumed since the queue was created: the stream offset of the next byte. */
  get consumed(): number {
    return this.consumedTotal;
  }

  push(buf: Buffer): void {
    if (buf.length === 0) return;
    this.chunks.push(buf);
    this.available += buf.length;
  }

  /**
   * If `buf` (pushed earlier, backed by reusable memory) is still partly unconsumed, replaces it by
   * a private copy of its unconsumed part, so the memory can be reused safely.
   */
  own(buf: Buffer): void {
    const last = this.chunks.length - 1;
    if (last < this.head || this.chunks[last] !== buf) return;
    const from = last === this.head ? this.headOffset : 0;
    this.chunks[last] = Buffer.from(buf.subarray(from));
    if (last === this.head) this.headOffset = 0;
  }

  /** Accounts for bytes of the stream that bypassed the queue (received in place). */
  consumedExternally(n: number): void {
    this.consumedTotal += n;
  }

  peekUInt32BE(at = 0): number {
    return this.view(at, 4).readUInt32BE(this.viewOffset);
  }

  readUInt8(): number {
    const v = this.view(0, 1).readUInt8(this.viewOffset);
    this.skip(1);
    return v;
  }

  readUInt16BE(): number {
    const v = this.view(0, 2).readUInt16BE(this.viewOffset);
    this.skip(2);
    return v;
  }

  readUInt32BE(): number {
    const v = this.view(0, 4).readUInt32BE(this.viewOffset);
    this.skip(4);
    return v;
  }

  /** Values above 2^53 come back inexact but still > Number.MAX_SAFE_INTEGER, so callers can range-check them. */
  readUInt64(): number {
    const buf = this.view(0, 8);
    const v = buf.readUInt32BE(this.viewOffset) * 0x1_0000_0000 + buf.readUInt32BE(this.viewOffset + 4);
    this.skip(8);
    return v;
  }

  readBigUInt64BE(): bigint {
    const v = this.view(0, 8).readBigUInt64BE(this.viewOffset);
    this.skip(8);
    return v;
  }

  /** Moves `n` bytes (which must be buffered) into `dst` at `dstOffset`. */
  copyTo(dst: Uint8Array, dstOffset: number, n: number): void {
    this.assertAvailable(n);
    let done = 0;
    while (done < n) {
      const chunk = this.chunks[this.head]!;
      const take = Math.min(n - done, chunk.length - this.headOffset);
      chunk.copy(dst, dstOffset + done, this.headOffset, this.headOffset + take);
      done += take;
      this.consume(take);
    }
  }

  /**
   * Removes and returns `n` bytes. Zero-copy when they lie in one chunk; the result may then share
   * memory with a received Buffer, so treat it as read-only.
   */
  take(n: number): Buffer {
    this.assertAvailable(n);
    const chunk = this.chunks[this.head];
    if (chunk !== undefined && chunk.length - this.headOffset >= n) {
      const out = chunk.subarray(this.headOffset, this.headOffset + n);
      this.consume(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyTo(out, 0, n);
    return out;
  }

  skip(n: number): void {
    this.assertAvailable(n);
    let left = n;
    while (left > 0) {
      const chunk = this.chunks[this.head]!;
      const step = Math.min(left, chunk.length - this.headOffset);
      left -= step;
      this.consume(step);
    }
  }

  clear(): void {
    this.consumedTotal += this.available;
    this.chunks = [];
    this.head = 0;
    this.headOffset = 0;
    this.available = 0;
  }

  private viewOffset = 0;

  /**
   * Returns a buffer holding bytes [at, at+n) of the queue at `this.viewOffset`: the chunk itself when
   * they do not straddle a boundary (the common case), otherwise the scratch buffer.
   */
  private view(at: number, n: number): Buffer {
    this.assertAvailable(at + n);
    let idx = this.head;
    let pos = this.headOffset + at;
    let chunk = this.chunks[idx]!;
    while (pos >= chunk.length) {
      pos -= chunk.length;
      chunk = this.chunks[++idx]!;
    }
    if (chunk.length - pos >= n) {
      this.viewOffset = pos;
      return chunk;
    }
    let filled = 0;
    while (filled < n) {
      const step = Math.min(n - filled, chunk.length - pos);
      chunk.copy(this.scratch, filled, pos, pos + step);
      filled += step;
      pos = 0;
      chunk = this.chunks[++idx]!;
    }
    this.viewOffset = 0;
    return this.scratch;
  }

  private consume(n: number): void {
    this.headOffset += n;
    this.available -= n;
    this.consumedTotal += n;
    const chunk = this.chunks[this.head]!;
    if (this.headOffset === chunk.length) {
      this.chunks[this.head] = EMPTY;
      this.head++;
      this.headOffset = 0;
      if (this.head === this.chunks.length) {
        this.chunks.length = 0;
        this.head = 0;
      } else if (this.head >= 64 && this.head * 2 >= this.chunks.length) {
        this.chunks = this.chunks.slice(this.head);
        this.head = 0;
      }
    }
  }

  private assertAvailable(n: number): void {
    if (n > this.available) {
      // A parser bug, not a wire problem: callers check `length` before reading.
      throw new RangeError(`ByteQueue: ${n} bytes requested but only ${this.available} buffered`);
    }
  }
}

const EMPTY = Buffer.alloc(0);
