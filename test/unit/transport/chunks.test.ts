import { createHash, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { getCodec, noneCodec, zstdNapiCodec } from "../../../src/codec/index.js";
import { ChecksumAlgorithm, CompressionCodec } from "../../../src/gen/qreplica/v1/common.js";
import { ExtentChunk, RejectReason, ReplicateRequest } from "../../../src/gen/qreplica/v1/replication.js";
import {
  ChecksumMismatchError,
  ChunkRejectedError,
  InvalidExtentError,
  Uint64RangeError,
  decodeExtentChunk,
  encodeExtentChunk,
  encodeExtentChunkRequest,
  serializeReplicateRequest,
  toChunkRejected,
  toUint64,
  uint64ToSafeNumber,
  type ChunkRejectCode,
  type EncodeOptions,
} from "../../../src/transport/index.js";

const MiB = 1024 * 1024;
const zstd = getCodec("zstd");
const opts = { generation: 3n, cycleSeq: 7n, diskId: "disk-0", codec: zstd, level: 1 };
const decodeOpts = { maxChunkBytes: 4 * MiB };
const FRAME = ChecksumAlgorithm.CHECKSUM_ALGORITHM_ZSTD_FRAME;

function text(bytes: number): Buffer {
  return Buffer.from("the quick brown fox jumps over the lazy replica\n".repeat(Math.ceil(bytes / 48))).subarray(0, bytes);
}

function expectReject(fn: () => unknown, code: ChunkRejectCode): ChunkRejectedError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ChunkRejectedError);
  const e = caught as ChunkRejectedError;
  expect(e.code).toBe(code);
  expect(RejectReason[e.rejectReason]).toBe(`REJECT_REASON_${code}`);
  return e;
}

function withPayload(chunk: ExtentChunk, codec: CompressionCodec, data: Buffer): ExtentChunk {
  return { ...chunk, payload: { $case: "data", value: { codec, data } } };
}

describe("encodeExtentChunk / decodeExtentChunk", () => {
  it("compresses compressible data, checksums the uncompressed bytes and decodes them back", () => {
    const data = text(4 * MiB);
    const chunk = encodeExtentChunk({ kind: "data", offset: 8 * MiB, length: data.length, data }, opts);
    expect(chunk.payload?.$case === "data" && chunk.payload.value.codec).toBe(CompressionCodec.COMPRESSION_CODEC_ZSTD);
    expect(chunk.payload?.$case === "data" && chunk.payload.value.data.length).toBeLessThan(data.length / 10);
    expect(chunk.checksumAlgorithm).toBe(ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256);
    expect(chunk.checksum).toEqual(createHash("sha256").update(data).digest());
    expect(chunk).toMatchObject({ generation: 3n, cycleSequence: 7n, diskId: "disk-0", offset: BigInt(8 * MiB), length: 4 * MiB });

    // Through the protobuf encoding too, as it would cross the wire.
    const decoded = decodeExtentChunk(ExtentChunk.decode(ExtentChunk.encode(chunk).finish()), decodeOpts);
    expect(decoded.kind).toBe("data");
    expect(decoded.offset).toBe(8 * MiB);
    expect(decoded.kind === "data" && decoded.data.equals(data)).toBe(true);
  });

  it("sends incompressible data raw (codec NONE) rather than a larger zstd frame", () => {
    const data = randomBytes(MiB);
    const chunk = encodeExtentChunk({ kind: "data", offset: 0, length: data.length, data }, opts);
    expect(chunk.payload?.$case === "data" && chunk.payload.value.codec).toBe(CompressionCodec.COMPRESSION_CODEC_NONE);
    const decoded = decodeExtentChunk(chunk, decodeOpts);
    expect(decoded.kind === "data" && decoded.data.equals(data)).toBe(true);
  });

  it("uses NONE with the none codec", () => {
    const data = text(MiB);
    const chunk = encodeExtentChunk({ kind: "data", offset: 0, length: data.length, data }, { ...opts, codec: noneCodec });
    expect(chunk.payload?.$case === "data" && chunk.payload.value.codec).toBe(CompressionCodec.COMPRESSION_CODEC_NONE);
  });

  it("encodes zero ranges without payload or checksum, longer than max_chunk_bytes", () => {
    const chunk = encodeExtentChunk({ kind: "zero", offset: 4096, length: 1024 * MiB }, opts);
    expect(chunk.payload).toEqual({ $case: "zero", value: {} });
    expect(chunk.checksum.length).toBe(0);
    expect(chunk.checksumAlgorithm).toBe(ChecksumAlgorithm.CHECKSUM_ALGORITHM_UNSPECIFIED);
    expect(decodeExtentChunk(chunk, decodeOpts)).toMatchObject({ kind: "zero", offset: 4096, length: 1024 * MiB });
  });

  it("refuses to encode an extent whose data does not match its length", () => {
    expect(() => encodeExtentChunk({ kind: "data", offset: 0, length: 10, data: Buffer.alloc(9) }, opts)).toThrow(InvalidExtentError);
    expect(() => encodeExtentChunk({ kind: "zero", offset: -1, length: 10 }, opts)).toThrow(InvalidExtentError);
    expect(() => encodeExtentChunk({ kind: "zero", offset: 0, length: 2 ** 32 }, opts)).toThrow(InvalidExtentError);
  });
});

describe("encodeExtentChunkRequest (the sender's hand-written wire encoding)", () => {
  const cases: Array<[string, Parameters<typeof encodeExtentChunk>[0], Partial<EncodeOptions>]> = [
    ["compressible data", { kind: "data", offset: 4 * MiB, length: 2 * MiB, data: text(2 * MiB) }, {}],
    ["incompressible data sent raw", { kind: "data", offset: 123 * 65536, length: MiB, data: randomBytes(MiB) }, {}],
    ["the none codec", { kind: "data", offset: 0, length: 4096, data: text(4096) }, { codec: noneCodec }],
    ["offset 0, generation and sequence 0", { kind: "data", offset: 0, length: 100, data: text(100) }, { generation: 0n, cycleSeq: 0n }],
    ["offsets past 2^32 and 2^53-1", { kind: "data", offset: Number.MAX_SAFE_INTEGER - 8192, length: 8192, data: text(8192) }, {}],
    ["generation and sequence at 2^64-1", { kind: "data", offset: 65536, length: 1, data: Buffer.from([7]) }, { generation: 2n ** 64n - 1n, cycleSeq: 2n ** 63n }],
    ["a long, non-ASCII disk id", { kind: "data", offset: 512, length: 1000, data: randomBytes(1000) }, { diskId: "disque-é".repeat(40) }],
    ["a zero range", { kind: "zero", offset: 8 * MiB, length: 3 * 1024 * MiB }, {}],
    ["the zstd frame checksum", { kind: "data", offset: 2 * MiB, length: 2 * MiB, data: text(2 * MiB) }, { checksum: FRAME }],
    ["the zstd frame checksum, incompressible", { kind: "data", offset: 0, length: MiB, data: randomBytes(MiB) }, { checksum: FRAME }],
  ];
  for (const [name, extent, extra] of cases) {
    it(`produces the generated encoder's bytes: ${name}`, () => {
      const o = { ...opts, ...extra };
      const fast = encodeExtentChunkRequest(extent, o);
      const chunk = encodeExtentChunk(extent, o);
      const generated = Buffer.from(ReplicateRequest.encode({ body: { $case: "extentChunk", value: chunk } }).finish());
      expect(serializeReplicateRequest(fast.request).equals(generated)).toBe(true);
      expect(fast.wireBytes).toBe(chunk.payload?.$case === "data" ? chunk.payload.value.data.length : 0);
      // And the replica decodes it back to the extent's bytes.
      const decoded = ReplicateRequest.decode(fast.request.bytes);
      expect(decoded.body?.$case).toBe("extentChunk");
      if (decoded.body?.$case !== "extentChunk") return;
      const back = decodeExtentChunk(decoded.body.value, { maxChunkBytes: 4 * MiB });
      expect(back.offset).toBe(extent.offset);
      if (extent.kind === "data") expect(back.kind === "data" && back.data.equals(extent.data)).toBe(true);
      else expect(back.kind).toBe("zero");
    });
  }

  it("copies the payload out: reusing the read buffer or encoding the next chunk leaves it intact", () => {
    const data = text(MiB);
    const first = encodeExtentChunkRequest({ kind: "data", offset: 0, length: MiB, data }, opts);
    const raw = encodeExtentChunkRequest({ kind: "data", offset: MiB, length: MiB, data: randomBytes(MiB) }, opts);
    const expectedFirst = Buffer.from(first.request.bytes);
    const expectedRaw = Buffer.from(raw.request.bytes);
    data.fill(0xee);
    encodeExtentChunkRequest({ kind: "data", offset: 0, length: MiB, data: text(MiB).reverse() }, opts);
    expect(first.request.bytes.equals(expectedFirst)).toBe(true);
    expect(raw.request.bytes.equals(expectedRaw)).toBe(true);
  });
});

describe("the zstd frame checksum (CHECKSUM_ALGORITHM_ZSTD_FRAME)", () => {
  const frameOpts = { ...opts, checksum: FRAME };
  const data = text(2 * MiB);
  const good = encodeExtentChunk({ kind: "data", offset: MiB, length: data.length, data }, frameOpts);
  const frameOf = (c: ExtentChunk) => Buffer.from(c.payload?.$case === "data" ? c.payload.value.data : Buffer.alloc(0));

  it("carries the frame's own 4-byte content checksum and decodes without SHA-256", () => {
    expect(good.checksumAlgorithm).toBe(FRAME);
    expect(good.checksum.equals(frameOf(good).subarray(-4))).toBe(true);
    const decoded = decodeExtentChunk(ExtentChunk.decode(ExtentChunk.encode(good).finish()), decodeOpts);
    expect(decoded.kind === "data" && decoded.data.equals(data)).toBe(true);
  });

  it("sends incompressible data as a zstd frame of raw blocks, a few bytes over the data", () => {
    const random = randomBytes(MiB);
    const chunk = encodeExtentChunk({ kind: "data", offset: 0, length: MiB, data: random }, frameOpts);
    expect(chunk.payload?.$case === "data" && chunk.payload.value.codec).toBe(CompressionCodec.COMPRESSION_CODEC_ZSTD);
    expect(frameOf(chunk).length - MiB).toBeGreaterThan(0);
    expect(frameOf(chunk).length - MiB).toBeLessThan(100);
    const decoded = decodeExtentChunk(chunk, decodeOpts);
    expect(decoded.kind === "data" && decoded.data.equals(random)).toBe(true);
  });

  it("refuses a flipped checksum field, and a frame whose content was damaged (raw block byte flipped)", () => {
    const checksum = Buffer.from(good.checksum);
    checksum[0] = checksum[0]! ^ 1;
    const e = expectReject(() => decodeExtentChunk({ ...good, checksum }, decodeOpts), "CHECKSUM_MISMATCH");
    expect(e.message).toContain("zstd frame checksum");
    const random = randomBytes(MiB);
    const raw = encodeExtentChunk({ kind: "data", offset: 0, length: MiB, data: random }, frameOpts);
    const damaged = frameOf(raw);
    damaged[MiB / 2] = damaged[MiB / 2]! ^ 0x10;
    expectReject(() => decodeExtentChunk(withPayload(raw, CompressionCodec.COMPRESSION_CODEC_ZSTD, damaged), decodeOpts), "CHECKSUM_MISMATCH");
  });

  it("refuses a frame without checksum, a second frame, a lying content size, the wrong codec or a 32-byte value", () => {
    const twoFrames = Buffer.concat([frameOf(good), frameOf(good)]);
    expectReject(() => decodeExtentChunk(withPayload(good, CompressionCodec.COMPRESSION_CODEC_ZSTD, twoFrames), decodeOpts), "DECOMPRESSION_FAILED");
    expectReject(() => decodeExtentChunk({ ...good, length: data.length - 1 }, decodeOpts), "DECOMPRESSION_FAILED");
    expectReject(() => decodeExtentChunk(withPayload(good, CompressionCodec.COMPRESSION_CODEC_NONE, data), decodeOpts), "UNSUPPORTED_CHECKSUM_ALGORITHM");
    expectReject(() => decodeExtentChunk({ ...good, checksum: createHash("sha256").update(data).digest() }, decodeOpts), "CHECKSUM_MISMATCH");
    const noChecksum = frameOf(good);
    noChecksum[4] = noChecksum[4]! & ~0x04; // clear Content_Checksum_flag: the last 4 bytes now read as data
    expectReject(() => decodeExtentChunk(withPayload(good, CompressionCodec.COMPRESSION_CODEC_ZSTD, noChecksum), decodeOpts), "DECOMPRESSION_FAILED");
  });

  it("is refused by a session that did not accept it, and cannot be used without zstd", () => {
    expectReject(() => decodeExtentChunk(good, { ...decodeOpts, acceptedChecksums: [ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256] }), "UNSUPPORTED_CHECKSUM_ALGORITHM");
    expect(() => encodeExtentChunk({ kind: "data", offset: 0, length: 10, data: text(10) }, { ...frameOpts, codec: noneCodec })).toThrow(RangeError);
  });
});

describe("decodeExtentChunk refuses, with the RejectReason as code", () => {
  const data = text(64 * 1024);
  const good = encodeExtentChunk({ kind: "data", offset: 1 << 20, length: data.length, data }, opts);
  const raw = encodeExtentChunk({ kind: "data", offset: 1 << 20, length: data.length, data }, { ...opts, codec: noneCodec });

  it("a flipped checksum byte, naming disk, offset and length", () => {
    const checksum = Buffer.from(good.checksum);
    checksum[5] = checksum[5]! ^ 1;
    const e = expectReject(() => decodeExtentChunk({ ...good, checksum }, decodeOpts), "CHECKSUM_MISMATCH");
    expect(e).toBeInstanceOf(ChecksumMismatchError);
    expect(e.message).toContain('disk "disk-0"');
    expect(e.message).toContain(`offset ${1 << 20}`);
    expect(e.message).toContain(`length ${data.length}`);
    expect(toChunkRejected(e)).toMatchObject({
      generation: 3n,
      cycleSequence: 7n,
      diskId: "disk-0",
      offset: BigInt(1 << 20),
      reason: RejectReason.REJECT_REASON_CHECKSUM_MISMATCH,
    });
  });

  it("a flipped data byte", () => {
    const bytes = Buffer.from(raw.payload?.$case === "data" ? raw.payload.value.data : Buffer.alloc(0));
    bytes[100] = bytes[100]! ^ 0x40;
    expectReject(() => decodeExtentChunk(withPayload(raw, CompressionCodec.COMPRESSION_CODEC_NONE, bytes), decodeOpts), "CHECKSUM_MISMATCH");
  });

  it("a checksum of the wrong size", () => {
    expectReject(() => decodeExtentChunk({ ...good, checksum: good.checksum.subarray(0, 31) }, decodeOpts), "CHECKSUM_MISMATCH");
  });

  it("lengths above max_chunk_bytes, offsets past 2^53 or past the disk", () => {
    expectReject(() => decodeExtentChunk(good, { maxChunkBytes: data.length - 1 }), "OUT_OF_RANGE");
    expectReject(() => decodeExtentChunk({ ...good, offset: 2n ** 53n }, decodeOpts), "OUT_OF_RANGE");
    expectReject(() => decodeExtentChunk({ ...good, length: 0 }, decodeOpts), "OUT_OF_RANGE");
    expectReject(() => decodeExtentChunk(good, { ...decodeOpts, diskSizeBytes: (1 << 20) + data.length - 1 }), "OUT_OF_RANGE");
    expect(decodeExtentChunk(good, { ...decodeOpts, diskSizeBytes: (1 << 20) + data.length }).kind).toBe("data");
  });

  it("unknown, unset or unaccepted codecs", () => {
    const payload = good.payload?.$case === "data" ? good.payload.value.data : Buffer.alloc(0);
    expectReject(() => decodeExtentChunk(withPayload(good, CompressionCodec.COMPRESSION_CODEC_UNSPECIFIED, payload), decodeOpts), "UNSUPPORTED_CODEC");
    expectReject(() => decodeExtentChunk(withPayload(good, 42 as CompressionCodec, payload), decodeOpts), "UNSUPPORTED_CODEC");
    expectReject(() => decodeExtentChunk(good, { ...decodeOpts, acceptedCodecs: [CompressionCodec.COMPRESSION_CODEC_NONE] }), "UNSUPPORTED_CODEC");
  });

  it("a data chunk without SHA-256, or a zero range with a checksum", () => {
    expectReject(() => decodeExtentChunk({ ...good, checksumAlgorithm: ChecksumAlgorithm.CHECKSUM_ALGORITHM_UNSPECIFIED }, decodeOpts), "UNSUPPORTED_CHECKSUM_ALGORITHM");
    const zero = encodeExtentChunk({ kind: "zero", offset: 0, length: 4096 }, opts);
    expectReject(() => decodeExtentChunk({ ...zero, checksum: Buffer.alloc(32) }, decodeOpts), "UNSUPPORTED_CHECKSUM_ALGORITHM");
  });

  it("garbage, a bomb, a short frame, a lying length or no payload", () => {
    const zstdPayload = (buf: Buffer) => withPayload(good, CompressionCodec.COMPRESSION_CODEC_ZSTD, buf);
    expectReject(() => decodeExtentChunk(zstdPayload(randomBytes(500)), decodeOpts), "DECOMPRESSION_FAILED");
    const bomb = zstdNapiCodec.compress(Buffer.alloc(64 * MiB), 1);
    const e = expectReject(() => decodeExtentChunk(zstdPayload(bomb), decodeOpts), "DECOMPRESSION_FAILED");
    expect(e.message).toMatch(/expected/);
    expectReject(() => decodeExtentChunk({ ...good, length: data.length + 1 }, decodeOpts), "DECOMPRESSION_FAILED");
    expectReject(() => decodeExtentChunk({ ...raw, length: data.length - 1 }, decodeOpts), "DECOMPRESSION_FAILED");
    expectReject(() => decodeExtentChunk({ ...good, payload: undefined }, decodeOpts), "DECOMPRESSION_FAILED");
  });

  it("never throws anything but a ChunkRejectedError, whatever bytes arrive", () => {
    const wire = Buffer.from(ExtentChunk.encode(good).finish());
    let seed = 1;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let i = 0; i < 2000; i++) {
      const mutated = Buffer.from(wire);
      for (let k = 0; k <= rand(4); k++) mutated[rand(mutated.length)] = rand(256);
      let chunk: ExtentChunk;
      try {
        chunk = ExtentChunk.decode(mutated);
      } catch {
        continue; // grpc-js fails the call on a message that does not parse; never reaches here
      }
      try {
        const decoded = decodeExtentChunk(chunk, decodeOpts);
        // Accepted only if the bytes are still exactly the sender's (a mutation elsewhere).
        if (decoded.kind === "data") expect(decoded.data.equals(data)).toBe(true);
      } catch (err) {
        expect(err).toBeInstanceOf(ChunkRejectedError);
      }
    }
  });
});

describe("uint64 helpers", () => {
  it("convert both ways and refuse what does not fit", () => {
    expect(toUint64(5, "generation")).toBe(5n);
    expect(() => toUint64(-1, "generation")).toThrow(Uint64RangeError);
    expect(() => toUint64(2n ** 64n, "generation")).toThrow(Uint64RangeError);
    expect(() => toUint64(0.5, "generation")).toThrow(Uint64RangeError);
    expect(uint64ToSafeNumber(2n ** 53n - 1n, "offset")).toBe(2 ** 53 - 1);
    expect(() => uint64ToSafeNumber(2n ** 53n, "offset")).toThrow(Uint64RangeError);
  });
});
