import { QreplicaError } from "../common/errors.js";

/** A value does not fit the wire's uint64, or a wire uint64 does not fit a JS number. */
export class Uint64RangeError extends QreplicaError {
  readonly code = "UINT64_OUT_OF_RANGE" as const;
}

const UINT64_MAX = (1n << 64n) - 1n;

/** For generation, cycle sequence and offsets going onto the wire, which ts-proto types as bigint. */
export function toUint64(value: number | bigint, what: string): bigint {
  if (typeof value === "number" && !Number.isSafeInteger(value)) {
    throw new Uint64RangeError(`${what} ${value} is not a safe integer`);
  }
  const v = BigInt(value);
  if (v < 0n || v > UINT64_MAX) throw new Uint64RangeError(`${what} ${value} does not fit in uint64`);
  return v;
}

/**
 * For wire values the rest of the code handles as numbers (byte offsets, sequences). Above 2^53 a
 * number silently rounds, which for a disk offset would mean writing to the wrong place.
 */
export function uint64ToSafeNumber(value: bigint, what: string): number {
  if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Uint64RangeError(`${what} ${value} is beyond ${Number.MAX_SAFE_INTEGER}, the largest exact JS number`);
  }
  return Number(value);
}

/** The generation as every data-plane message carries it. */
export function toWireGeneration(generation: number | bigint): bigint {
  return toUint64(generation, "generation");
}
