import { QreplicaError } from "../common/errors.js";

export type DecompressionFailure =
  /** Not a valid frame: truncated, corrupted, or not this codec at all. */
  | "corrupt"
  /** The frame would produce more than the caller expected (possibly a decompression bomb). */
  | "too-large"
  /** The frame is valid but holds fewer bytes than the caller expected. */
  | "too-small";

/**
 * A payload could not be turned back into exactly the bytes the sender described. The code is the
 * wire's `REJECT_REASON_DECOMPRESSION_FAILED`, so a replica can forward it without translation.
 */
export class CodecError extends QreplicaError {
  readonly code = "DECOMPRESSION_FAILED" as const;

  constructor(
    message: string,
    readonly failure: DecompressionFailure,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Compression refused its arguments (e.g. a level the policy should not have allowed). */
export class CompressionFailedError extends QreplicaError {
  readonly code = "COMPRESSION_FAILED" as const;
}

/** The name is not a codec qreplica knows. */
export class UnsupportedCodecError extends QreplicaError {
  readonly code = "UNSUPPORTED_CODEC" as const;
}

/** The codec is known but no implementation loads in this runtime (e.g. a missing native build). */
export class CodecUnavailableError extends QreplicaError {
  readonly code = "CODEC_UNAVAILABLE" as const;
}

/** A caller bug rather than bad input, hence a plain RangeError. */
export function checkExpectedLength(codec: string, expectedLength: number): void {
  if (!Number.isSafeInteger(expectedLength) || expectedLength < 0) {
    throw new RangeError(`${codec}: expected length ${expectedLength} is not a byte count`);
  }
}
