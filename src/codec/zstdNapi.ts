import { createRequire } from "node:module";
import type * as ZstdBinding from "zstd-napi/binding.js";
import type { Codec } from "./codec.js";
import { CodecError, CodecUnavailableError, CompressionFailedError, checkExpectedLength } from "./errors.js";

// The low-level binding rather than zstd-napi's Decompressor: the latter sizes its output from
// the frame header (or grows without bound when the header has none), which is exactly what a
// decompression bomb exploits. ZSTD_decompressDCtx into a buffer of the expected size cannot
// write past it and fails with "Destination buffer is too small" instead.
// Loaded lazily so that a runtime without the native build can still fall back to node:zlib.
let binding: typeof ZstdBinding | undefined;
let loadError: unknown;

function load(): typeof ZstdBinding {
  if (binding) return binding;
  if (loadError === undefined) {
    try {
      binding = createRequire(import.meta.url)("zstd-napi/binding.js") as typeof ZstdBinding;
      return binding;
    } catch (err) {
      loadError = err;
    }
  }
  throw new CodecUnavailableError(
    "zstd-napi's native module did not load; rebuild it with `npm rebuild zstd-napi` " + "(needs a C compiler and node headers) or run on Node >= 22.15, which has zstd built in",
    { cause: loadError },
  );
}

export function zstdNapiAvailable(): boolean {
  try {
    load();
    return true;
  } catch {
    return false;
  }
}

// Contexts are reused: creating one per 4 MiB chunk costs more than the compression of small ones.
let cctx: ZstdBinding.CCtx | undefined;
let cctxLevel: number | undefined;
let dctx: ZstdBinding.DCtx | undefined;

/** Output this much smaller than the bound is copied out, so in-flight chunks do not pin 4 MiB each. */
const TRIM_RATIO = 0.75;

export const zstdNapiCodec: Codec = {
  name: "zstd",
  implementation: "zstd-napi",

  compress(buf: Uint8Array, level: number, into?: Buffer): Buffer {
    const b = load();
    if (!Number.isInteger(level) || level < b.minCLevel() || level > b.maxCLevel()) {
      // zstd clamps silently; a policy typo should be visible instead.
      throw new CompressionFailedError(`zstd level ${level} is outside ${b.minCLevel()}..${b.maxCLevel()}; fix the replication policy's compression level`);
    }
    if (!cctx) {
      cctx = new b.CCtx();
      // Every frame carries XXH64 of its content, which the decompressor verifies for free.
      cctx.setParameter(b.CParameter.checksumFlag, 1);
      cctxLevel = undefined;
    }
    if (cctxLevel !== level) {
      cctx.setParameter(b.CParameter.compressionLevel, level);
      cctxLevel = level;
    }
    const bound = b.compressBound(buf.length);
    const dst = into && into.length >= bound ? into : Buffer.allocUnsafe(bound);
    let n: number;
    try {
      n = cctx.compress2(dst, buf);
    } catch (err) {
      cctx = undefined; // a failed context may be left mid-frame
      throw new CompressionFailedError(`zstd compression of ${buf.length} bytes failed`, { cause: err });
    }
    if (dst === into) return dst.subarray(0, n);
    return n < TRIM_RATIO * dst.length ? Buffer.from(dst.subarray(0, n)) : dst.subarray(0, n);
  },

  decompress(buf: Uint8Array, expectedLength: number, into?: Buffer): Buffer {
    checkExpectedLength("zstd", expectedLength);
    const b = load();
    let declared: number | null = null;
    try {
      declared = b.getFrameContentSize(buf);
    } catch (err) {
      throw new CodecError(`zstd payload of ${buf.length} bytes is not a zstd frame`, "corrupt", { cause: err });
    }
    // Only a clearer message: the bounded buffer below is what actually enforces the limit,
    // including for frames that do not declare their size.
    if (declared !== null && declared > expectedLength) {
      throw new CodecError(`zstd frame declares ${declared} bytes but ${expectedLength} were expected; refusing to decompress`, "too-large");
    }
    dctx ??= new b.DCtx();
    const out = into && into.length >= expectedLength ? into.subarray(0, expectedLength) : Buffer.allocUnsafe(expectedLength);
    let n: number;
    try {
      n = dctx.decompress(out, buf);
    } catch (err) {
      dctx = undefined;
      const tooLarge = /too small/i.test(err instanceof Error ? err.message : "");
      throw new CodecError(
        tooLarge
          ? `zstd payload decompresses to more than the expected ${expectedLength} bytes; refusing it`
          : `zstd payload of ${buf.length} bytes is corrupt: ${err instanceof Error ? err.message : String(err)}`,
        tooLarge ? "too-large" : "corrupt",
        { cause: err },
      );
    }
    if (n !== expectedLength) {
      throw new CodecError(`zstd payload decompressed to ${n} bytes, expected ${expectedLength}`, "too-small");
    }
    return out;
  },
};
