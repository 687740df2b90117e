import { QreplicaError } from "../common/errors.js";

/** What a stream is at when a conflict is found: KurrentDB reports `actualState` the same way. */
export type ActualVersion = bigint | "no_stream";

/** The values an `append` may state; duplicated from eventStore.ts to keep this module leaf-level. */
type ExpectedVersionLike = bigint | "no_stream" | "stream_exists" | "any";

function describeVersion(v: ExpectedVersionLike): string {
  return typeof v === "bigint" ? `version ${v}` : v === "no_stream" ? "no stream" : v;
}

/**
 * Optimistic concurrency lost: another writer appended to the stream since the caller read it.
 * Never retried blindly by the store, because the command was decided on stale state; the caller
 * must reload the stream, re-decide and append again.
 */
export class WrongExpectedVersionError extends QreplicaError {
  readonly code = "WRONG_EXPECTED_VERSION" as const;

  constructor(
    readonly stream: string,
    readonly expected: ExpectedVersionLike,
    readonly actual: ActualVersion,
    options?: { cause?: unknown },
  ) {
    super(
      `Stream "${stream}": expected ${describeVersion(expected)} but it is at ${describeVersion(actual)}. ` +
        `Another writer changed it first: reload stream "${stream}", decide again and retry.`,
      options,
    );
  }
}

/** The caller passed something the ledger cannot store or interpret (a bug in the caller). */
export class LedgerArgumentError extends QreplicaError {
  readonly code = "LEDGER_INVALID_ARGUMENT" as const;
}

/** A stored row cannot be decoded (e.g. its JSON was edited by hand); reads stop rather than guess. */
export class LedgerCorruptError extends QreplicaError {
  readonly code = "LEDGER_CORRUPT" as const;

  constructor(
    message: string,
    readonly globalPosition: bigint,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** One broken link found by `verifyLedger`. */
export interface LedgerProblem {
  stream: string;
  version: bigint;
  globalPosition: bigint;
  reason: string;
}

/** Thrown by `assertLedgerIntact` when verification found broken hash chains. */
export class LedgerIntegrityError extends QreplicaError {
  readonly code = "LEDGER_INTEGRITY" as const;

  constructor(readonly problems: readonly LedgerProblem[]) {
    const first = problems[0];
    super(
      `Ledger verification failed: ${problems.length} stream(s) with a broken hash chain` +
        (first ? `, first: stream "${first.stream}" at version ${first.version}: ${first.reason}` : ""),
    );
  }
}

/** The ledger file cannot be used: missing, not SQLite, not a qreplica ledger, or a newer schema. */
export class LedgerOpenError extends QreplicaError {
  readonly code = "LEDGER_OPEN_FAILED" as const;

  constructor(
    message: string,
    readonly path: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The store or subscription was closed; nothing more is read or written through it. */
export class LedgerClosedError extends QreplicaError {
  readonly code = "LEDGER_CLOSED" as const;
}

/**
 * Structural guard: matches on `code`, so it still works if two copies of this module end up
 * loaded (the failure Emmett's SQLite package hit with `instanceof`).
 */
export function isWrongExpectedVersionError(err: unknown): err is WrongExpectedVersionError {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === "WRONG_EXPECTED_VERSION";
}
