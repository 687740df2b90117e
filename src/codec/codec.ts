/** The codecs a chunk may be compressed with; mirrors `CompressionCodec` on the wire. */
export type CodecName = "zstd" | "none";

/**
 * One-shot compression of a chunk. Every chunk is its own frame, so the replica can verify and
 * write it without state from other chunks, and a chunk is small enough (1-4 MiB) that a
 * synchronous call is cheaper than a stream.
 */
export interface Codec {
  readonly name: CodecName;
  /** Which library does the work; for logs and benchmarks, never on the wire. */
  readonly implementation: string;
  /** Throws `CompressionFailedError` for a level outside the codec's range. */
  compress(buf: Uint8Array, level: number): Buffer;
  /**
   * Decompresses to exactly `expectedLength` bytes. Never allocates more than `expectedLength`,
   * whatever the frame claims, so a decompression bomb is a `CodecError`, not an out-of-memory.
   */
  decompress(buf: Uint8Array, expectedLength: number): Buffer;
}

/** zstd's default, a good balance for replication links; the policy may choose another. */
export const DEFAULT_ZSTD_LEVEL = 3;
