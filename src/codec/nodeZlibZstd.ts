import * as zlib from "node:zlib";
import type { Codec } from "./codec.js";
import { CodecError, CodecUnavailableError, CompressionFailedError, checkExpectedLength } from "./errors.js";

// Node >= 22.15 / 23.8 has zstd in core; @types/node 20 does not describe it, so the few members
// used here are typed by hand.
interface ZstdOptions {
  params?: Record<number, number>;
  /** Size of each output buffer the sync call allocates (the result is their concatenation, or a view of the only one). */
  chunkSize?: number;
  maxOutputLength?: number;
  /** Written into the frame header as its content size. */
  pledgedSrcSize?: number;
}
interface ZlibWithZstd {
  zstdCompressSync(buf: Uint8Array, options?: ZstdOptions): Buffer;
  zstdDecompressSync(buf: Uint8Array, options?: ZstdOptions): Buffer;
  constants: { ZSTD_c_compressionLevel: number; ZSTD_c_checksumFlag: number };
}

const z = zlib as unknown as Partial<ZlibWithZstd>;

export function nodeZlibZstdAvailable(): boolean {
  return typeof z.zstdCompressSync === "function" && typeof z.zstdDecompressSync === "function";
}

function api(): ZlibWithZstd {
  if (!nodeZlibZstdAvailable()) {
    throw new CodecUnavailableError(`node:zlib has no zstd in Node ${process.version} (needs >= 22.15); use zstd-napi`);
  }
  return z as ZlibWithZstd;
}

// zstd's own bounds (ZSTD_minCLevel/ZSTD_maxCLevel); node:zlib does not expose them.
const MIN_LEVEL = -131072;
const MAX_LEVEL = 22;
/** zlib's smallest chunkSize (Z_MIN_CHUNK). */
const MIN_CHUNK = 64;
/** As in zstdNapi.ts: a frame this much smaller than its output buffer is copied out, so in-flight chunks do not pin 2 MiB each. */
const TRIM_RATIO = 0.75;

/** ZSTD_COMPRESSBOUND: the largest frame zstd writes for `n` bytes. */
function compressBound(n: number): number {
  return n + (n >>> 8) + (n < 128 * 1024 ? (128 * 1024 - n) >>> 11 : 0);
}

export const nodeZlibZstdCodec: Codec = {
  name: "zstd",
  implementation: "node:zlib",

  compress(buf: Uint8Array, level: number): Buffer {
    const zz = api();
    if (!Number.isInteger(level) || level < MIN_LEVEL || level > MAX_LEVEL) {
      throw new CompressionFailedError(`zstd level ${level} is outside ${MIN_LEVEL}..${MAX_LEVEL}; fix the replication policy's compression level`);
    }
    try {
      // Like zstd-napi's frames: content size in the header and XXH64 of the content at the end.
      // One output buffer that always fits the frame (plus the byte that lets zlib see the end
      // without another round): the default 16 KiB chunks cost a third of the throughput.
      const chunkSize = Math.max(MIN_CHUNK, compressBound(buf.length) + 1);
      const frame = zz.zstdCompressSync(buf, {
        params: { [zz.constants.ZSTD_c_compressionLevel]: level, [zz.constants.ZSTD_c_checksumFlag]: 1 },
        pledgedSrcSize: buf.length,
        chunkSize,
      });
      return frame.length < TRIM_RATIO * chunkSize ? Buffer.from(frame) : frame;
    } catch (err) {
      throw new CompressionFailedError(`zstd compression of ${buf.length} bytes failed`, { cause: err });
    }
  },

  decompress(buf: Uint8Array, expectedLength: number): Buffer {
    checkExpectedLength("zstd", expectedLength);
    const zz = api();
    let out: Buffer;
    try {
      // maxOutputLength stops inflation at the limit (ERR_BUFFER_TOO_LARGE) rather than after it.
      // chunkSize: one buffer of the expected size and one byte more, so a frame that holds more
      // stops there, and a well-formed one ends without a second allocation.
      out = zz.zstdDecompressSync(buf, { maxOutputLength: Math.max(1, expectedLength), chunkSize: Math.max(MIN_CHUNK, expectedLength + 1) });
    } catch (err) {
      const tooLarge = (err as { code?: unknown }).code === "ERR_BUFFER_TOO_LARGE";
      throw new CodecError(
        tooLarge
          ? `zstd payload decompresses to more than the expected ${expectedLength} bytes; refusing it`
          : `zstd payload of ${buf.length} bytes is corrupt: ${err instanceof Error ? err.message : String(err)}`,
        tooLarge ? "too-large" : "corrupt",
        { cause: err },
      );
    }
    if (out.length !== expectedLength) {
      throw new CodecError(`zstd payload decompressed to ${out.length} bytes, expected ${expectedLength}`, out.length > expectedLength ? "too-large" : "too-small");
    }
    return out;
  },
};
