import { createHash } from "node:crypto";
import { getCodec, type Codec } from "../codec/index.js";
import { ChecksumAlgorithm, CompressionCodec } from "../gen/qreplica/v1/common.js";
import type { ExtentChunk } from "../gen/qreplica/v1/replication.js";
import {
  ChecksumMismatchError,
  ChunkDecompressionFailedError,
  ChunkOutOfRangeError,
  InvalidExtentError,
  UnsupportedChecksumAlgorithmError,
  UnsupportedChunkCodecError,
  type ChunkRef,
} from "./chunkErrors.js";
import { toUint64 } from "./uint64.js";

/** What the capture layer yields (structurally the same as replica-agent's `CaptureExtent`). */
export type ExtentPiece =
  | { kind: "data"; offset: number; length: number; data: Buffer }
  | { kind: "zero"; offset: number; length: number };

export interface EncodeOptions {
  generation: bigint | number;
  cycleSeq: bigint | number;
  diskId: string;
  codec: Codec;
  /** The policy's compression level; ignored by the none codec. */
  level: number;
}

/** `length` is a uint32 on the wire, which bounds zero ranges (data is bounded by max_chunk_bytes). */
export const MAX_WIRE_LENGTH = 0xffff_ffff;
const SHA256_BYTES = 32;

export function sha256(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest();
}

/** One capture piece as one wire chunk, checksummed over the bytes the replica must end up with. */
export function encodeExtentChunk(extent: ExtentPiece, opts: EncodeOptions): ExtentChunk {
  const where = `extent of disk "${opts.diskId}" at offset ${extent.offset}, length ${extent.length}`;
  if (!Number.isSafeInteger(extent.offset) || extent.offset < 0) {
    throw new InvalidExtentError(`${where}: offset is not a non-negative safe integer`);
  }
  if (!Number.isInteger(extent.length) || extent.length <= 0 || extent.length > MAX_WIRE_LENGTH) {
    throw new InvalidExtentError(`${where}: length must be 1..${MAX_WIRE_LENGTH}; split longer extents`);
  }
  const head = {
    generation: toUint64(opts.generation, "generation"),
    cycleSequence: toUint64(opts.cycleSeq, "cycle sequence"),
    diskId: opts.diskId,
    offset: BigInt(extent.offset),
    length: extent.length,
  };
  if (extent.kind === "zero") {
    return {
      ...head,
      payload: { $case: "zero", value: {} },
      checksumAlgorithm: ChecksumAlgorithm.CHECKSUM_ALGORITHM_UNSPECIFIED,
      checksum: Buffer.alloc(0),
    };
  }
  if (extent.data.length !== extent.length) {
    throw new InvalidExtentError(`${where}: carries ${extent.data.length} bytes of data`);
  }
  const checksum = sha256(extent.data);
  let codec = CompressionCodec.COMPRESSION_CODEC_NONE;
  let payload: Buffer = extent.data;
  if (opts.codec.name === "zstd") {
    const packed = opts.codec.compress(extent.data, opts.level);
    // Incompressible data (encrypted or already compressed guest files) grows a little under
    // zstd; sending it raw saves the replica a pointless decompression as well as the bytes.
    if (packed.length < extent.data.length) {
      codec = CompressionCodec.COMPRESSION_CODEC_ZSTD;
      payload = packed;
    }
  }
  // Sent raw, the chunk must own its bytes: grpc-js serializes a message only when the stream
  // gets to it, and the capture layer reuses its read buffers as soon as the next piece is asked for.
  if (payload === extent.data) payload = Buffer.from(extent.data);
  return {
    ...head,
    payload: { $case: "data", value: { codec, data: payload } },
    checksumAlgorithm: ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256,
    checksum,
  };
}

export type DecodedChunk =
  | { kind: "data"; offset: number; length: number; data: Buffer; diskId: string; generation: bigint; cycleSequence: bigint; wireBytes: number }
  | { kind: "zero"; offset: number; length: number; diskId: string; generation: bigint; cycleSequence: bigint };

export interface DecodeOptions {
  /** Largest data chunk accepted (the HelloAck's max_chunk_bytes); bounds decompression memory. */
  maxChunkBytes: number;
  /** The disk's virtual size at the cut-off, when known: chunks past it are OUT_OF_RANGE. */
  diskSizeBytes?: number | bigint;
  /** The codecs this session accepted in HelloAck; NONE and ZSTD when omitted. */
  acceptedCodecs?: readonly CompressionCodec[];
  /** The zstd implementation to use; `getCodec("zstd")` when omitted. */
  zstd?: Codec;
}

const DEFAULT_CODECS = [CompressionCodec.COMPRESSION_CODEC_NONE, CompressionCodec.COMPRESSION_CODEC_ZSTD];

/**
 * Turns a wire chunk back into the bytes to write, trusting nothing in it: every field is checked
 * before it is used, and any problem is a `ChunkRejectedError` whose code names the RejectReason.
 * Generation, sequence and disk are returned but not judged: that needs the session's state.
 */
export function decodeExtentChunk(chunk: ExtentChunk, opts: DecodeOptions): DecodedChunk {
  const ref: ChunkRef = {
    diskId: chunk.diskId,
    offset: chunk.offset,
    length: chunk.length,
    generation: chunk.generation,
    cycleSequence: chunk.cycleSequence,
  };
  const { length } = chunk;
  if (chunk.offset < 0n || chunk.offset + BigInt(length) > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ChunkOutOfRangeError(ref, `offset + length is beyond ${Number.MAX_SAFE_INTEGER}`);
  }
  const offset = Number(chunk.offset);
  if (!Number.isInteger(length) || length <= 0 || length > MAX_WIRE_LENGTH) {
    throw new ChunkOutOfRangeError(ref, `length must be 1..${MAX_WIRE_LENGTH}`);
  }
  if (opts.diskSizeBytes !== undefined && BigInt(offset + length) > BigInt(opts.diskSizeBytes)) {
    throw new ChunkOutOfRangeError(ref, `ends at ${offset + length}, past the disk's ${opts.diskSizeBytes} bytes`);
  }
  const base = { offset, length, diskId: chunk.diskId, generation: chunk.generation, cycleSequence: chunk.cycleSequence };
  const payload = chunk.payload;

  if (payload?.$case === "zero") {
    if (chunk.checksumAlgorithm !== ChecksumAlgorithm.CHECKSUM_ALGORITHM_UNSPECIFIED || chunk.checksum.length > 0) {
      throw new UnsupportedChecksumAlgorithmError(ref, "a zero range carries no payload and must carry no checksum");
    }
    return { kind: "zero", ...base };
  }
  if (payload?.$case !== "data") {
    // No RejectReason says "malformed"; a missing payload is one that cannot decompress to `length`.
    throw new ChunkDecompressionFailedError(ref, "the chunk has neither data nor a zero range");
  }
  if (length > opts.maxChunkBytes) {
    throw new ChunkOutOfRangeError(ref, `data chunks may be at most ${opts.maxChunkBytes} bytes (max_chunk_bytes)`);
  }
  if (chunk.checksumAlgorithm !== ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256) {
    throw new UnsupportedChecksumAlgorithmError(ref, `checksum algorithm ${chunk.checksumAlgorithm} is not supported (SHA-256 is)`);
  }
  if (chunk.checksum.length !== SHA256_BYTES) {
    throw new ChecksumMismatchError(ref, `${chunk.checksum.length}-byte value`, "a 32-byte SHA-256 digest");
  }
  const { codec, data: wire } = payload.value;
  if (!(opts.acceptedCodecs ?? DEFAULT_CODECS).includes(codec)) {
    throw new UnsupportedChunkCodecError(ref, `compression codec ${codec} is not accepted by this session`);
  }
  let data: Buffer;
  try {
    if (codec === CompressionCodec.COMPRESSION_CODEC_ZSTD) {
      data = (opts.zstd ?? getCodec("zstd")).decompress(wire, length);
    } else if (codec === CompressionCodec.COMPRESSION_CODEC_NONE) {
      data = getCodec("none").decompress(wire, length);
    } else {
      throw new UnsupportedChunkCodecError(ref, `compression codec ${codec} is unknown`);
    }
  } catch (err) {
    if (err instanceof UnsupportedChunkCodecError) throw err;
    throw new ChunkDecompressionFailedError(ref, err instanceof Error ? err.message : String(err), { cause: err });
  }
  // Codecs promise exact length; checked again because this is the last line before the disk.
  if (data.length !== length) {
    throw new ChunkDecompressionFailedError(ref, `payload decompressed to ${data.length} bytes`);
  }
  const actual = sha256(data);
  if (!actual.equals(chunk.checksum)) {
    throw new ChecksumMismatchError(ref, chunk.checksum.toString("hex"), actual.toString("hex"));
  }
  return { kind: "data", ...base, data, wireBytes: wire.length };
}
