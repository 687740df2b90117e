import type { Codec, CodecName } from "./codec.js";
import { CodecUnavailableError, UnsupportedCodecError } from "./errors.js";
import { noneCodec } from "./none.js";
import { nodeZlibZstdAvailable, nodeZlibZstdCodec } from "./nodeZlibZstd.js";
import { zstdNapiAvailable, zstdNapiCodec } from "./zstdNapi.js";

export type { Codec, CodecName } from "./codec.js";
export { DEFAULT_ZSTD_LEVEL } from "./codec.js";
export {
  CodecError,
  CodecUnavailableError,
  CompressionFailedError,
  UnsupportedCodecError,
  type DecompressionFailure,
} from "./errors.js";
export { noneCodec } from "./none.js";
export { inspectZstdFrame, type ZstdFrameInfo } from "./zstdFrame.js";
export { nodeZlibZstdAvailable, nodeZlibZstdCodec } from "./nodeZlibZstd.js";
export { zstdNapiAvailable, zstdNapiCodec } from "./zstdNapi.js";

export type ZstdImplementation = "node:zlib" | "zstd-napi";

/**
 * The codec for a name. For zstd, the native addon zstd-napi is the default: on Node 24 it
 * compresses and, above all, decompresses faster than the runtime's built-in `node:zlib` zstd,
 * which makes a new context per call and cannot decompress into a caller's buffer (`npm run bench
 * -- --only zstd-codec`; README "Performance"). `node:zlib` (Node >= 22.15) takes over where the
 * addon does not load; `prefer` overrides the order, e.g. for benchmarks. Frames are standard
 * zstd either way (the two read each other's, tested), so sites using either interoperate.
 */
export function getCodec(name: string, options: { prefer?: ZstdImplementation } = {}): Codec {
  switch (name) {
    case "none":
      return noneCodec;
    case "zstd": {
      const order: ZstdImplementation[] = options.prefer === "node:zlib" ? ["node:zlib", "zstd-napi"] : ["zstd-napi", "node:zlib"];
      for (const impl of order) {
        if (impl === "node:zlib" && nodeZlibZstdAvailable()) return nodeZlibZstdCodec;
        if (impl === "zstd-napi" && zstdNapiAvailable()) return zstdNapiCodec;
      }
      throw new CodecUnavailableError(`no zstd implementation in Node ${process.version}: rebuild zstd-napi (\`npm rebuild zstd-napi\`) or use Node >= 22.15`);
    }
    default:
      throw new UnsupportedCodecError(`unknown codec "${name}"; expected one of: zstd, none`);
  }
}

export function isCodecName(name: string): name is CodecName {
  return name === "zstd" || name === "none";
}
