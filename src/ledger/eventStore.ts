/**
 * The ledger's storage port. Every adapter (memory, SQLite, later KurrentDB) implements exactly
 * this, and `test/unit/ledger/eventStoreContract.ts` is the executable definition of its behaviour.
 *
 * Versions and positions are `bigint` because KurrentDB's revisions and positions are 64-bit
 * unsigned and a ledger must never silently lose precision.
 */
import { LedgerArgumentError, WrongExpectedVersionError } from "./errors.js";
import type { SnapshotStore } from "./snapshots.js";

// #region contract

/**
 * What the caller believes about the stream when appending. A bigint is the version of the last
 * event the caller saw (the first event of a stream is version 0n).
 *
 * Deliberately the same values as KurrentDB's `AppendStreamState`
 * (`"any" | "no_stream" | "stream_exists" | bigint` revision, client 1.x), so the future adapter
 * passes it through as `appendToStream(stream, events, { streamState })` and maps the server's
 * `WrongExpectedVersionError { streamName, expectedState, actualState }` onto ours field by field.
 * Its other differences are absorbed by the adapter: `StreamNotFoundError` on read becomes `[]`,
 * and because the hash chain needs the head's hash, an "any"/"stream_exists" append must first
 * read the head and append with that concrete revision (retrying on conflict), or two concurrent
 * appends would both chain from the same predecessor.
 */
export type ExpectedVersion = bigint | "no_stream" | "stream_exists" | "any";

export const NO_STREAM = "no_stream" satisfies ExpectedVersion;
export const STREAM_EXISTS = "stream_exists" satisfies ExpectedVersion;
export const ANY = "any" satisfies ExpectedVersion;

/**
 * An event to append. `data` and `metadata` must be plain JSON: objects, arrays, strings, finite
 * numbers, booleans and null. bigint, Date, Map, NaN and the like are refused rather than coerced,
 * because the stored bytes are hashed and must read back identically (see hashChain.ts).
 * Properties whose value is `undefined` are dropped, as JSON.stringify does.
 */
export interface NewEvent {
  type: string;
  data: Record<string, unknown>;
  metadata?: Record<string, unknown>;
}

export interface RecordedEvent {
  readonly stream: string;
  readonly version: bigint;
  /** Strictly increasing across the whole store; not necessarily contiguous (KurrentDB's are not). */
  readonly globalPosition: bigint;
  readonly type: string;
  readonly data: Record<string, unknown>;
  readonly metadata: Record<string, unknown>;
  readonly recordedAt: Date;
  /** sha256 hex of `previousHash` + canonical JSON of the event, see hashChain.ts. */
  readonly hash: string;
  readonly previousHash: string;
}

export interface AppendResult {
  /** The version of the last appended event: pass it as the next `expectedVersion`. */
  nextExpectedVersion: bigint;
  lastGlobalPosition: bigint;
}

export interface ReadStreamOptions {
  /** Inclusive; default 0n. */
  fromVersion?: bigint;
  maxCount?: number;
}

export interface ReadAllOptions {
  /** Exclusive, so a checkpoint (the last position processed) can be passed straight back. */
  fromPosition?: bigint;
  maxCount?: number;
  streamPrefix?: string;
}

export interface SubscribeOptions {
  /** Exclusive, as in `readAll`; omitted means from the very first event. */
  fromPosition?: bigint;
  streamPrefix?: string;
}

export type EventHandler = (event: RecordedEvent) => void | Promise<void>;

/**
 * Catch-up then live delivery, in global order, each event exactly once, one handler call at a
 * time (the next event waits for the previous handler's promise).
 */
export interface Subscription {
  /** Stops delivery at once; resolves after the handler call in flight (if any) has finished. */
  close(): Promise<void>;
  /** Resolves once every event that existed when catch-up finished has been handled. */
  readonly caughtUp: Promise<void>;
  /** Resolves when closed normally; rejects with the error (a handler's or the store's) that stopped it. */
  readonly closed: Promise<void>;
}

/**
 * Snapshots (snapshots.ts) are part of the port so every adapter can serve them; they are a cache
 * and never decide concurrency, which stays with the stream version given to `append`.
 */
export interface EventStore extends SnapshotStore {
  /** Atomic: all events are stored with consecutive versions, or none is. */
  append(stream: string, events: NewEvent[], expectedVersion: ExpectedVersion): Promise<AppendResult>;
  /** A missing stream reads as `[]`. */
  readStream(stream: string, opts?: ReadStreamOptions): Promise<RecordedEvent[]>;
  readAll(opts?: ReadAllOptions): Promise<RecordedEvent[]>;
  subscribe(opts: SubscribeOptions, handler: EventHandler): Subscription;
  /** Version of the stream's last event, `undefined` when the stream does not exist. */
  streamVersion(stream: string): Promise<bigint | undefined>;
  /** Closes every subscription, then the storage. Idempotent. */
  close(): Promise<void>;
}

// #endregion

/**
 * The one place the concurrency rule lives, so every adapter refuses exactly the same cases.
 * `current` is the stream's last version, or `undefined` if it has no events.
 */
export function assertExpectedVersion(stream: string, expected: ExpectedVersion, current: bigint | undefined): void {
  const actual = current ?? "no_stream";
  const ok =
    expected === "any" ||
    (expected === "no_stream" && current === undefined) ||
    (expected === "stream_exists" && current !== undefined) ||
    (typeof expected === "bigint" && expected === current);
  if (!ok) throw new WrongExpectedVersionError(stream, expected, actual);
}

export function validateAppendArguments(stream: string, events: readonly NewEvent[], expected: ExpectedVersion): void {
  validateStreamName(stream);
  if (!Array.isArray(events) || events.length === 0) {
    // An empty append has no version to return and would only hide a caller bug.
    throw new LedgerArgumentError(`append to "${stream}" needs at least one event`);
  }
  if (typeof expected === "bigint") {
    if (expected < 0n) throw new LedgerArgumentError(`expected version must be >= 0n, got ${expected}`);
  } else if (expected !== "no_stream" && expected !== "stream_exists" && expected !== "any") {
    throw new LedgerArgumentError(`unknown expected version ${String(expected)}`);
  }
  for (const [i, e] of events.entries()) {
    if (typeof e?.type !== "string" || e.type.length === 0) {
      throw new LedgerArgumentError(`event ${i} appended to "${stream}" has no type`);
    }
    if (!isRecord(e.data)) throw new LedgerArgumentError(`event ${i} (${e.type}) data must be an object`);
    if (e.metadata !== undefined && !isRecord(e.metadata)) {
      throw new LedgerArgumentError(`event ${i} (${e.type}) metadata must be an object`);
    }
  }
}

export function validateStreamName(stream: string): void {
  if (typeof stream !== "string" || stream.length === 0) {
    throw new LedgerArgumentError("stream name must be a non-empty string");
  }
}

/** Returns the limit to apply, `undefined` for none. */
export function validateMaxCount(maxCount: number | undefined): number | undefined {
  if (maxCount === undefined) return undefined;
  if (!Number.isSafeInteger(maxCount) || maxCount < 0) {
    throw new LedgerArgumentError(`maxCount must be a non-negative integer, got ${maxCount}`);
  }
  return maxCount;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
