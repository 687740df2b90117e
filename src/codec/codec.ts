/** The codecs a chunk may be compressed with; mirrors `CompressionCodec` on the wire. */
export type CodecName = "zstd" | "none";

/**
 * One-shot compression of a chunk. Every chunk is its own frame, so the replica can verify and
 * write it without state from other chunks, and a chunk is small enough (1-4 MiB) that a
 * synchronous call is cheaper than a stream. zstd frames declare their content size and end with
 * the content's checksum (XXH64), which decompression verifies.
 */
export interface Codec {
  readonly name: CodecName;
  /** Which library does the work; for logs and benchmarks, never on the wire. */
  readonly implementation: string;
  /**
   * Throws `CompressionFailedError` for a level outside the codec's range. With `into`, the result
   * may be a view of it (when it is large enough), so a caller that reuses `into` must copy the
   * result out first; hot paths use this to avoid one allocation per chunk.
   */
  compress(buf: Uint8Array, level: number, into?: Buffer): Buffer;
  /**
   * Decompresses to exactly `expectedLength` bytes. Never allocates more than `expectedLength`,
   * whatever the frame claims, so a decompression bomb is a `CodecError`, not an out-of-memory.
   * With `into` (at least `expectedLength` bytes) the bytes may land in it; the result may also
   * be a view of `buf` (the none codec), so its lifetime is the shorter of the two.
   */
  decompress(buf: Uint8Array, expectedLength: number, into?: Buffer): Buffer;
}

/** zstd's default, a good balance for replication links; the policy may choose another. */
export const DEFAULT_ZSTD_LEVEL = 3;
