import { randomBytes } from "node:crypto";
import { Compressor } from "zstd-napi";
import { describe, expect, it } from "vitest";
import {
  CodecError,
  CompressionFailedError,
  UnsupportedCodecError,
  getCodec,
  inspectZstdFrame,
  noneCodec,
  nodeZlibZstdAvailable,
  nodeZlibZstdCodec,
  zstdNapiCodec,
  type Codec,
} from "../../../src/codec/index.js";

const MiB = 1024 * 1024;

/** Text with enough variety that higher levels find more to gain than level 1 does. */
function text(bytes: number): Buffer {
  const words = ["replica", "cycle", "extent", "bitmap", "qcow2", "overlay", "generation", "ledger", "fleece"];
  let s = "";
  let seed = 12345;
  while (s.length < bytes) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    s += `${words[seed % words.length]} ${seed % 9973} ${words[(seed >> 8) % words.length]}\n`;
  }
  return Buffer.from(s.slice(0, bytes));
}

function expectCodecError(fn: () => unknown, failure: CodecError["failure"]): CodecError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(CodecError);
  const e = caught as CodecError;
  expect(e.code).toBe("DECOMPRESSION_FAILED");
  expect(e.failure).toBe(failure);
  return e;
}

const zstdCodecs: Codec[] = [zstdNapiCodec, ...(nodeZlibZstdAvailable() ? [nodeZlibZstdCodec] : [])];

describe.each(zstdCodecs.map((c) => [c.implementation, c] as const))("zstd codec (%s)", (_impl, codec) => {
  it.each([
    ["text", text(4 * MiB)],
    ["random", randomBytes(MiB)],
    ["zeroes", Buffer.alloc(4 * MiB)],
    ["empty", Buffer.alloc(0)],
  ])("round-trips %s", (_kind, data) => {
    const packed = codec.compress(data, 1);
    expect(codec.decompress(packed, data.length).equals(data)).toBe(true);
  });

  it("honours the level: level 9 beats level 1 on text", () => {
    const data = text(4 * MiB);
    const l1 = codec.compress(data, 1).length;
    const l9 = codec.compress(data, 9).length;
    expect(l9).toBeLessThan(l1);
    expect(l1).toBeLessThan(data.length / 2);
  });

  it("refuses a level outside zstd's range instead of clamping it", () => {
    expect(() => codec.compress(text(1024), 23)).toThrow(CompressionFailedError);
    expect(() => codec.compress(text(1024), 1.5)).toThrow(CompressionFailedError);
  });

  // Without zstd's optional frame checksum a flipped literal byte can decode "fine", which is why
  // every chunk carries its own SHA-256; the codec can only catch structural damage.
  it("reports garbage and truncated frames as DECOMPRESSION_FAILED", () => {
    const data = text(MiB);
    const packed = codec.compress(data, 3);
    expectCodecError(() => codec.decompress(randomBytes(4096), data.length), "corrupt");
    expectCodecError(() => codec.decompress(packed.subarray(0, packed.length >> 1), data.length), "corrupt");
    const badMagic = Buffer.from(packed);
    badMagic[0] = badMagic[0]! ^ 0xff;
    expectCodecError(() => codec.decompress(badMagic, data.length), "corrupt");
  });

  it("refuses a bomb whose frame declares more than expected", () => {
    const bomb = codec.compress(Buffer.alloc(64 * MiB), 1);
    expect(bomb.length).toBeLessThan(64 * 1024);
    const e = expectCodecError(() => codec.decompress(bomb, 4 * MiB), "too-large");
    expect(e.message).toMatch(/4194304/);
  });

  it("refuses a bomb whose frame does not declare its size", () => {
    const c = new Compressor();
    c.setParameters({ compressionLevel: 3, contentSizeFlag: false });
    const bomb = c.compress(Buffer.alloc(64 * MiB));
    expectCodecError(() => codec.decompress(bomb, 4 * MiB), "too-large");
  });

  it("refuses a frame that holds fewer bytes than expected", () => {
    const packed = codec.compress(text(1000), 3);
    expectCodecError(() => codec.decompress(packed, 1001), "too-small");
  });
});

describe("none codec", () => {
  it("passes bytes through and checks the length", () => {
    const data = randomBytes(1000);
    expect(noneCodec.decompress(noneCodec.compress(data, 0), 1000)).toEqual(data);
    expectCodecError(() => noneCodec.decompress(data, 999), "too-large");
    expectCodecError(() => noneCodec.decompress(data, 1001), "too-small");
  });
});

describe("getCodec", () => {
  it("picks zstd-napi (the faster one: bench zstd-codec), node:zlib on request", () => {
    const codec = getCodec("zstd");
    expect(codec.name).toBe("zstd");
    expect(codec).toBe(zstdNapiCodec);
    expect(getCodec("zstd", { prefer: "zstd-napi" })).toBe(zstdNapiCodec);
    expect(getCodec("zstd", { prefer: "node:zlib" })).toBe(nodeZlibZstdAvailable() ? nodeZlibZstdCodec : zstdNapiCodec);
    expect(getCodec("none")).toBe(noneCodec);
  });

  it("refuses an unknown name with a typed error", () => {
    expect(() => getCodec("lz4")).toThrow(UnsupportedCodecError);
  });
});

// The tested runtime is Node 24 (scripts/install.sh, .ci/run), whose node:zlib has zstd: there the
// built-in codec must be present and tested, never skipped.
const major = Number(process.versions.node.split(".")[0]);
describe("node:zlib zstd beside zstd-napi", () => {
  it.skipIf(major < 24)(`is available on the tested runtime (this is Node ${process.version})`, () => {
    expect(nodeZlibZstdAvailable()).toBe(true);
  });

  if (!nodeZlibZstdAvailable()) {
    console.log(`skipped: node:zlib zstd interoperability needs Node >= 22.15 (this is ${process.version}); zstd-napi is the codec here`);
  }
  const kinds = [
    ["text", text(3 * MiB + 17)],
    ["random", randomBytes(MiB)],
    ["zeroes", Buffer.alloc(2 * MiB)],
    ["empty", Buffer.alloc(0)],
  ] as const;
  it.skipIf(!nodeZlibZstdAvailable()).each(kinds)("each decodes the other's frames of %s at levels 1, 3 and 19, and both write content size and checksum", (_kind, data) => {
    for (const level of [1, 3, 19]) {
      for (const [writer, reader] of [
        [nodeZlibZstdCodec, zstdNapiCodec],
        [zstdNapiCodec, nodeZlibZstdCodec],
      ] as const) {
        const frame = writer.compress(data, level);
        const info = inspectZstdFrame(frame);
        expect(info.frameBytes, `${writer.implementation} level ${level}`).toBe(frame.length);
        expect(info.contentSize).toBe(data.length);
        expect(info.checksum?.length).toBe(4);
        expect(reader.decompress(frame, data.length).equals(data), `${reader.implementation} reading ${writer.implementation}'s level ${level}`).toBe(true);
      }
    }
  });

  it.skipIf(!nodeZlibZstdAvailable())("both compute the same frame checksum (XXH64 of the content) for the same data", () => {
    const data = text(2 * MiB);
    expect(inspectZstdFrame(nodeZlibZstdCodec.compress(data, 1)).checksum).toEqual(inspectZstdFrame(zstdNapiCodec.compress(data, 1)).checksum);
  });
});
