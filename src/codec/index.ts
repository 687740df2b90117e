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
 * The codec for a name. For zstd, the runtime's built-in `node:zlib` is used when it has one (as
 * DESIGN.md asks: no native addon to rebuild on upgrades), otherwise zstd-napi; `prefer` overrides
 * that, e.g. for benchmarks. Frames are standard zstd either way, so sites on different Node
 * versions interoperate.
 */
export function getCodec(name: string, options: { prefer?: ZstdImplementation } = {}): Codec {
  switch (name) {
    case "none":
      return noneCodec;
    case "zstd": {
      const order: ZstdImplementation[] = options.prefer === "zstd-napi" ? ["zstd-napi", "node:zlib"] : ["node:zlib", "zstd-napi"];
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
