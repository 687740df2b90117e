import { createHash } from "node:crypto";
import { getCodec, inspectZstdFrame, type Codec } from "../codec/index.js";
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
import { EncodedReplicateRequest, messageSize, serializeReplicateRequest, writeMessage, type WireField } from "./replicateWire.js";
import { toUint64 } from "./uint64.js";

/** What the capture layer yields (structurally the same as replica-agent's `CaptureExtent`). */
export type ExtentPiece = { kind: "data"; offset: number; length: number; data: Buffer } | { kind: "zero"; offset: number; length: number };

export interface EncodeOptions {
  generation: bigint | number;
  cycleSeq: bigint | number;
  diskId: string;
  codec: Codec;
  /** The policy's compression level; ignored by the none codec. */
  level: number;
  /** SHA-256 unless given; ZSTD_FRAME needs the zstd codec (see common.proto). */
  checksum?: ChecksumAlgorithm;
}

/** `length` is a uint32 on the wire, which bounds zero ranges (data is bounded by max_chunk_bytes). */
export const MAX_WIRE_LENGTH = 0xffff_ffff;
const SHA256_BYTES = 32;

export function sha256(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest();
}

type ChunkHead = Pick<ExtentChunk, "generation" | "cycleSequence" | "diskId" | "offset" | "length">;

type PreparedChunk =
  | { head: ChunkHead; kind: "zero" }
  /** `payload` may be a view of the extent's data or of the compression scratch buffer. */
  | { head: ChunkHead; kind: "data"; codec: CompressionCodec; payload: Buffer; algorithm: ChecksumAlgorithm; checksum: Buffer };

function prepareChunk(extent: ExtentPiece, opts: EncodeOptions, scratch?: Buffer): PreparedChunk {
  const where = `extent of disk "${opts.diskId}" at offset ${extent.offset}, length ${extent.length}`;
  if (!Number.isSafeInteger(extent.offset) || extent.offset < 0) {
    throw new InvalidExtentError(`${where}: offset is not a non-negative safe integer`);
  }
  if (!Number.isInteger(extent.length) || extent.length <= 0 || extent.length > MAX_WIRE_LENGTH) {
    throw new InvalidExtentError(`${where}: length must be 1..${MAX_WIRE_LENGTH}; split longer extents`);
  }
  const head: ChunkHead = {
    generation: toUint64(opts.generation, "generation"),
    cycleSequence: toUint64(opts.cycleSeq, "cycle sequence"),
    diskId: opts.diskId,
    offset: BigInt(extent.offset),
    length: extent.length,
  };
  if (extent.kind === "zero") return { head, kind: "zero" };
  if (extent.data.length !== extent.length) {
    throw new InvalidExtentError(`${where}: carries ${extent.data.length} bytes of data`);
  }
  const algorithm = opts.checksum ?? ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256;
  if (algorithm === ChecksumAlgorithm.CHECKSUM_ALGORITHM_ZSTD_FRAME) {
    if (opts.codec.name !== "zstd") throw new RangeError(`the zstd frame checksum needs the zstd codec, not ${opts.codec.name}`);
    // Always the frame, even when incompressible data makes it a few bytes larger than the data
    // (raw blocks): the frame is what carries the checksum.
    const frame = opts.codec.compress(extent.data, opts.level, scratch);
    const { checksum } = inspectZstdFrame(frame);
    if (!checksum) throw new Error(`internal: the ${opts.codec.implementation} codec wrote a zstd frame without a content checksum`);
    return { head, kind: "data", codec: CompressionCodec.COMPRESSION_CODEC_ZSTD, payload: frame, algorithm, checksum: Buffer.from(checksum) };
  }
  if (algorithm !== ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256) throw new RangeError(`cannot compute checksum algorithm ${algorithm}`);
  const checksum = sha256(extent.data);
  if (opts.codec.name === "zstd") {
    const packed = opts.codec.compress(extent.data, opts.level, scratch);
    // Incompressible data (encrypted or already compressed guest files) grows a little under
    // zstd; sending it raw saves the replica a pointless decompression as well as the bytes.
    if (packed.length < extent.data.length) return { head, kind: "data", codec: CompressionCodec.COMPRESSION_CODEC_ZSTD, payload: packed, algorithm, checksum };
  }
  return { head, kind: "data", codec: CompressionCodec.COMPRESSION_CODEC_NONE, payload: extent.data, algorithm, checksum };
}

function zeroChunk(head: ChunkHead): ExtentChunk {
  return { ...head, payload: { $case: "zero", value: {} }, checksumAlgorithm: ChecksumAlgorithm.CHECKSUM_ALGORITHM_UNSPECIFIED, checksum: Buffer.alloc(0) };
}

/** One capture piece as one wire chunk, checksummed over the bytes the replica must end up with. */
export function encodeExtentChunk(extent: ExtentPiece, opts: EncodeOptions): ExtentChunk {
  const chunk = prepareChunk(extent, opts);
  if (chunk.kind === "zero") return zeroChunk(chunk.head);
  // The chunk must own its bytes: grpc-js serializes a message only when the stream gets to it,
  // and the capture layer reuses its read buffers as soon as the next piece is asked for.
  const data = extent.kind === "data" && chunk.payload === extent.data ? Buffer.from(chunk.payload) : chunk.payload;
  return {
    ...chunk.head,
    payload: { $case: "data", value: { codec: chunk.codec, data } },
    checksumAlgorithm: chunk.algorithm,
    checksum: chunk.checksum,
  };
}

// Reused by every chunk of this process: compression is synchronous and the result is copied
// into the request before the next chunk is compressed.
let compressScratch: Buffer | undefined;

function scratchFor(length: number): Buffer {
  const needed = length + (length >> 7) + 64 * 1024; // above zstd's compressBound
  if (!compressScratch || compressScratch.length < needed) compressScratch = Buffer.allocUnsafe(needed);
  return compressScratch;
}

/**
 * `encodeExtentChunk` straight into the bytes of a ReplicateRequest carrying it: one buffer of
 * exactly the message's size, the payload copied once. The same bytes as encoding the
 * `encodeExtentChunk` result with the generated code; `wireBytes` is the payload as sent.
 */
export function encodeExtentChunkRequest(extent: ExtentPiece, opts: EncodeOptions): { request: EncodedReplicateRequest; wireBytes: number } {
  const chunk = prepareChunk(extent, opts, extent.kind === "data" ? scratchFor(extent.length) : undefined);
  if (chunk.kind === "zero") {
    return { request: new EncodedReplicateRequest(serializeReplicateRequest({ body: { $case: "extentChunk", value: zeroChunk(chunk.head) } })), wireBytes: 0 };
  }
  const { head, payload, checksum } = chunk;
  // ReplicateRequest { extent_chunk = 3: ExtentChunk }, in the field order of replication.proto.
  const request: WireField[] = [
    {
      field: 3,
      message: [
        { field: 1, varint: head.generation },
        { field: 2, varint: head.cycleSequence },
        { field: 3, bytes: Buffer.from(head.diskId, "utf8") },
        { field: 4, varint: head.offset },
        { field: 5, varint: head.length },
        {
          field: 6,
          message: [
            { field: 1, varint: chunk.codec },
            { field: 2, bytes: payload },
          ],
        }, // ChunkData
        { field: 8, varint: chunk.algorithm },
        { field: 9, bytes: checksum },
      ],
    },
  ];
  // A fresh buffer per chunk: pooling them (returned on grpc-js's write callback) measured ~12 MiB
  // more agent peak RSS for no CPU saving that stood out of the noise.
  const out = Buffer.allocUnsafe(messageSize(request));
  const end = writeMessage(out, 0, request);
  if (end !== out.length) throw new Error(`internal: extent chunk encoded to ${end} bytes, sized ${out.length}`);
  return { request: new EncodedReplicateRequest(out), wireBytes: payload.length };
}

export type DecodedChunk =
  | { kind: "data"; offset: number; length: number; data: Buffer; diskId: string; generation: bigint; cycleSequence: bigint; wireBytes: number }
  | { kind: "zero"; offset: number; length: number; diskId: string; generation: bigint; cycleSequence: bigint };

export interface DecodeOptions {
  /** Largest data chunk accepted (the HelloAck's max_chunk_bytes); bounds decompression memory. */
  maxChunkBytes: number;
  /** The disk's virtual size at the cut-off, when known: chunks past it are OUT_OF_RANGE. */
  diskSizeBytes?: number | bigint;
  /** The checksum algorithms this session accepted in HelloAck; all known ones when omitted. */
  acceptedChecksums?: readonly ChecksumAlgorithm[];
  /** The codecs this session accepted in HelloAck; NONE and ZSTD when omitted. */
  acceptedCodecs?: readonly CompressionCodec[];
  /** The zstd implementation to use; `getCodec("zstd")` when omitted. */
  zstd?: Codec;
  /**
   * Where decompressed bytes may go (at least the chunk's length), so a receiver can reuse
   * buffers; the result is then a view of it. Raw chunks stay views of the message instead.
   */
  into?: Buffer;
}

const DEFAULT_CODECS = [CompressionCodec.COMPRESSION_CODEC_NONE, CompressionCodec.COMPRESSION_CODEC_ZSTD];
/** Every checksum algorithm this version verifies, the cheapest first. */
export const KNOWN_CHECKSUMS: readonly ChecksumAlgorithm[] = [ChecksumAlgorithm.CHECKSUM_ALGORITHM_ZSTD_FRAME, ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256];
const ZSTD_FRAME_CHECKSUM_BYTES = 4;

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
  const algorithm = chunk.checksumAlgorithm;
  if (!(opts.acceptedChecksums ?? KNOWN_CHECKSUMS).includes(algorithm)) {
    throw new UnsupportedChecksumAlgorithmError(ref, `checksum algorithm ${ChecksumAlgorithm[algorithm] ?? algorithm} is not accepted by this session`);
  }
  const { codec, data: wire } = payload.value;
  if (!(opts.acceptedCodecs ?? DEFAULT_CODECS).includes(codec)) {
    throw new UnsupportedChunkCodecError(ref, `compression codec ${codec} is not accepted by this session`);
  }
  if (algorithm === ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256 && chunk.checksum.length !== SHA256_BYTES) {
    throw new ChecksumMismatchError(ref, `${chunk.checksum.length}-byte value`, "a 32-byte SHA-256 digest");
  }
  if (algorithm === ChecksumAlgorithm.CHECKSUM_ALGORITHM_ZSTD_FRAME) checkZstdFrame(ref, codec, wire, length, chunk.checksum);
  let data: Buffer;
  try {
    if (codec === CompressionCodec.COMPRESSION_CODEC_ZSTD) {
      data = (opts.zstd ?? getCodec("zstd")).decompress(wire, length, opts.into);
    } else if (codec === CompressionCodec.COMPRESSION_CODEC_NONE) {
      data = getCodec("none").decompress(wire, length);
    } else {
      throw new UnsupportedChunkCodecError(ref, `compression codec ${codec} is unknown`);
    }
  } catch (err) {
    if (err instanceof UnsupportedChunkCodecError) throw err;
    const message = err instanceof Error ? err.message : String(err);
    // The frame's own checksum did not match what came out of it.
    if (algorithm === ChecksumAlgorithm.CHECKSUM_ALGORITHM_ZSTD_FRAME && /checksum/i.test(message)) {
      throw new ChecksumMismatchError(ref, chunk.checksum.toString("hex"), "a different value", "zstd frame checksum (XXH64)");
    }
    throw new ChunkDecompressionFailedError(ref, message, { cause: err });
  }
  // Codecs promise exact length; checked again because this is the last line before the disk.
  if (data.length !== length) {
    throw new ChunkDecompressionFailedError(ref, `payload decompressed to ${data.length} bytes`);
  }
  if (algorithm === ChecksumAlgorithm.CHECKSUM_ALGORITHM_ZSTD_FRAME) return { kind: "data", ...base, data, wireBytes: wire.length };
  const actual = sha256(data);
  if (!actual.equals(chunk.checksum)) {
    throw new ChecksumMismatchError(ref, chunk.checksum.toString("hex"), actual.toString("hex"));
  }
  return { kind: "data", ...base, data, wireBytes: wire.length };
}

/**
 * What the zstd frame checksum relies on, checked before decompressing: one frame, exactly the
 * payload, declaring `length` bytes (so no unchecked trailing frame can add to them), with a
 * content checksum equal to the chunk's.
 */
function checkZstdFrame(ref: ChunkRef, codec: CompressionCodec, wire: Uint8Array, length: number, checksum: Buffer): void {
  if (codec !== CompressionCodec.COMPRESSION_CODEC_ZSTD) {
    throw new UnsupportedChecksumAlgorithmError(ref, "the zstd frame checksum needs COMPRESSION_CODEC_ZSTD");
  }
  if (checksum.length !== ZSTD_FRAME_CHECKSUM_BYTES) {
    throw new ChecksumMismatchError(ref, `${checksum.length}-byte value`, "the frame's 4-byte content checksum", "zstd frame checksum (XXH64)");
  }
  let frame;
  try {
    frame = inspectZstdFrame(wire);
  } catch (err) {
    throw new ChunkDecompressionFailedError(ref, err instanceof Error ? err.message : String(err), { cause: err });
  }
  if (frame.frameBytes !== wire.length) {
    throw new ChunkDecompressionFailedError(ref, `the zstd frame is ${frame.frameBytes} of the payload's ${wire.length} bytes; one frame per chunk`);
  }
  if (frame.contentSize !== length) {
    throw new ChunkDecompressionFailedError(ref, `the zstd frame declares ${frame.contentSize ?? "no"} content size, the chunk ${length} bytes`);
  }
  if (!frame.checksum) {
    throw new ChecksumMismatchError(ref, checksum.toString("hex"), "a frame without content checksum", "zstd frame checksum (XXH64)");
  }
  if (!frame.checksum.equals(checksum)) {
    throw new ChecksumMismatchError(ref, checksum.toString("hex"), frame.checksum.toString("hex"), "zstd frame checksum (XXH64)");
  }
}
