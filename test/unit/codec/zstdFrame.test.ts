import { createRequire } from "node:module";
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { CodecError, inspectZstdFrame, zstdNapiCodec } from "../../../src/codec/index.js";

// zstd's own C functions are the oracle for what the JS walker reads off a frame.
const binding = createRequire(import.meta.url)("zstd-napi/binding.js") as {
  findFrameCompressedSize(buf: Uint8Array): number;
  getFrameContentSize(buf: Uint8Array): number | null;
  compress(dst: Uint8Array, src: Uint8Array, level: number): number;
  compressBound(n: number): number;
};

const text = (n: number) => Buffer.from("log line 0042: replica ok\n".repeat(Math.ceil(n / 26) + 1)).subarray(0, n);

describe("inspectZstdFrame", () => {
  const inputs: Array<[string, Buffer]> = [
    ["empty", Buffer.alloc(0)],
    ["1 byte", Buffer.from([9])],
    ["255 bytes of text", text(255)],
    ["256 bytes of zeroes (RLE)", Buffer.alloc(256)],
    ["65 791 bytes of text", text(65_791)],
    ["2 MiB random (raw blocks)", randomBytes(2 * 1024 * 1024)],
    ["4 MiB text", text(4 * 1024 * 1024)],
  ];
  for (const [name, input] of inputs) {
    it(`agrees with zstd on ${name}: size, frame length, checksum at the end`, () => {
      const frame = Buffer.from(zstdNapiCodec.compress(input, 1));
      const info = inspectZstdFrame(frame);
      expect(info.contentSize).toBe(input.length);
      expect(binding.getFrameContentSize(frame)).toBe(input.length);
      expect(info.frameBytes).toBe(binding.findFrameCompressedSize(frame));
      expect(info.frameBytes).toBe(frame.length);
      expect(info.checksum?.equals(frame.subarray(frame.length - 4))).toBe(true);
      // Followed by more bytes, the frame still ends where it ends.
      expect(inspectZstdFrame(Buffer.concat([frame, frame])).frameBytes).toBe(frame.length);
    });
  }

  it("reports frames written without a checksum (plain ZSTD_compress) as such", () => {
    const input = text(100_000);
    const dst = Buffer.alloc(binding.compressBound(input.length));
    const frame = dst.subarray(0, binding.compress(dst, input, 1));
    const info = inspectZstdFrame(frame);
    expect(info.checksum).toBeUndefined();
    expect(info.frameBytes).toBe(frame.length);
  });

  it("turns every truncation and garbage into a CodecError, never another exception", () => {
    const frame = Buffer.from(zstdNapiCodec.compress(text(300_000), 1));
    for (let n = 0; n < frame.length; n += n < 64 ? 1 : 97) {
      expect(() => inspectZstdFrame(frame.subarray(0, n)), `prefix of ${n} bytes`).toThrow(CodecError);
    }
    for (let i = 0; i < 300; i++) {
      const junk = randomBytes(1 + (i % 64));
      if (i % 2 === 0 && junk.length >= 4) junk.writeUInt32LE(0xfd2fb528, 0); // a real magic, then nonsense
      try {
        inspectZstdFrame(junk);
      } catch (err) {
        expect(err).toBeInstanceOf(CodecError);
      }
    }
  });
});
