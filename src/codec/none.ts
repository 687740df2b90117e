import type { Codec } from "./codec.js";
import { CodecError, checkExpectedLength } from "./errors.js";

/** For incompressible data and for links where CPU matters more than bandwidth. */
export const noneCodec: Codec = {
  name: "none",
  implementation: "none",

  compress(buf: Uint8Array): Buffer {
    return Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  },

  decompress(buf: Uint8Array, expectedLength: number): Buffer {
    checkExpectedLength("none", expectedLength);
    if (buf.length !== expectedLength) {
      throw new CodecError(`uncompressed payload is ${buf.length} bytes, expected ${expectedLength}`, buf.length > expectedLength ? "too-large" : "too-small");
    }
    return Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  },
};
