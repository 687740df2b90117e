import { QreplicaError } from "../common/errors.js";
import { RejectReason, type ChunkRejected } from "../gen/qreplica/v1/replication.js";

/** Where a refused chunk claimed to be, as read from the wire (not yet trusted). */
export interface ChunkRef {
  diskId: string;
  offset: bigint;
  length: number;
  generation: bigint;
  cycleSequence: bigint;
}

/** The `RejectReason`s a single chunk can earn on its own, without session state. */
export type ChunkRejectCode = "OUT_OF_RANGE" | "UNSUPPORTED_CODEC" | "UNSUPPORTED_CHECKSUM_ALGORITHM" | "DECOMPRESSION_FAILED" | "CHECKSUM_MISMATCH";

const REASONS: Record<ChunkRejectCode, RejectReason> = {
  OUT_OF_RANGE: RejectReason.REJECT_REASON_OUT_OF_RANGE,
  UNSUPPORTED_CODEC: RejectReason.REJECT_REASON_UNSUPPORTED_CODEC,
  UNSUPPORTED_CHECKSUM_ALGORITHM: RejectReason.REJECT_REASON_UNSUPPORTED_CHECKSUM_ALGORITHM,
  DECOMPRESSION_FAILED: RejectReason.REJECT_REASON_DECOMPRESSION_FAILED,
  CHECKSUM_MISMATCH: RejectReason.REJECT_REASON_CHECKSUM_MISMATCH,
};

function describe(ref: ChunkRef): string {
  return `chunk of disk "${ref.diskId}" at offset ${ref.offset}, length ${ref.length} (cycle ${ref.cycleSequence}, generation ${ref.generation})`;
}

/**
 * A chunk the replica must refuse. Each subclass's `code` is a `RejectReason` name, so the site
 * server answers with `toChunkRejected(err)` and the sender sees the same reason it would log.
 */
export abstract class ChunkRejectedError extends QreplicaError {
  abstract override readonly code: ChunkRejectCode;

  constructor(
    readonly chunk: ChunkRef,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super(`${describe(chunk)}: ${problem}`, options);
  }

  get rejectReason(): RejectReason {
    return REASONS[this.code];
  }
}

/** Offset or length unusable: not a safe integer, zero, above max_chunk_bytes, or past the disk's end. */
export class ChunkOutOfRangeError extends ChunkRejectedError {
  readonly code = "OUT_OF_RANGE" as const;
}

export class UnsupportedChunkCodecError extends ChunkRejectedError {
  readonly code = "UNSUPPORTED_CODEC" as const;
}

export class UnsupportedChecksumAlgorithmError extends ChunkRejectedError {
  readonly code = "UNSUPPORTED_CHECKSUM_ALGORITHM" as const;
}

/** The payload is missing, is not a valid frame, or does not decompress to exactly `length` bytes. */
export class ChunkDecompressionFailedError extends ChunkRejectedError {
  readonly code = "DECOMPRESSION_FAILED" as const;
}

/** The bytes are not the ones the sender hashed: corrupted in flight or in the sender's memory. */
export class ChecksumMismatchError extends ChunkRejectedError {
  readonly code = "CHECKSUM_MISMATCH" as const;

  constructor(
    chunk: ChunkRef,
    readonly expected: string,
    readonly actual: string,
    readonly algorithm = "SHA-256",
  ) {
    super(chunk, `${algorithm} mismatch: sender's ${expected}, received bytes hash to ${actual}`);
  }
}

/** The wire answer for a refused chunk (the cycle is then doomed; see replication.proto). */
export function toChunkRejected(err: ChunkRejectedError): ChunkRejected {
  return {
    generation: err.chunk.generation,
    cycleSequence: err.chunk.cycleSequence,
    diskId: err.chunk.diskId,
    offset: err.chunk.offset,
    reason: err.rejectReason,
    message: err.message,
  };
}

/** The sender handed `encodeExtentChunk` something that cannot be a chunk: a bug on the sender. */
export class InvalidExtentError extends QreplicaError {
  readonly code = "INVALID_EXTENT" as const;
}
