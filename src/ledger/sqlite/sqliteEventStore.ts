/**
 * The embedded ledger: one SQLite file (better-sqlite3, WAL, synchronous=FULL), one row per event.
 *
 * better-sqlite3 is synchronous, so each append runs start to finish on the event loop with no
 * interleaving inside this process; across processes, BEGIN IMMEDIATE serialises writers, and
 * UNIQUE(stream_id, stream_version) is the last line of defence.
 */
import { EventEmitter } from "node:events";
import { realpathSync } from "node:fs";
import type Database from "better-sqlite3";
import type { Logger } from "../../common/logger.js";
import { LedgerClosedError, LedgerCorruptError, WrongExpectedVersionError } from "../errors.js";
import {
  assertExpectedVersion,
  validateAppendArguments,
  validateMaxCount,
  validateStreamName,
  type AppendResult,
  type EventHandler,
  type EventStore,
  type ExpectedVersion,
  type NewEvent,
  type ReadAllOptions,
  type ReadStreamOptions,
  type RecordedEvent,
  type SubscribeOptions,
  type Subscription,
} from "../eventStore.js";
import { GENESIS_HASH, sealEvents, type ChainRow } from "../hashChain.js";
import { OpenSubscriptions } from "../subscription.js";
import { openLedgerDatabase } from "./schema.js";
import { validateSnapshotRecord, type SnapshotRecord } from "../snapshots.js";

export interface SqliteEventStoreOptions {
  path: string;
  /** Create the file when missing (default true). */
  create?: boolean;
  /** Fallback re-read interval for subscriptions, to see other processes' appends (default 250 ms). */
  pollIntervalMs?: number;
  busyTimeoutMs?: number;
  clock?: () => Date;
  logger?: Logger;
}

export interface SqliteEventStore extends EventStore {
  readonly path: string;
}

interface EventRow {
  global_position: bigint;
  stream_id: string;
  stream_version: bigint;
  type: string;
  data: string;
  metadata: string;
  recorded_at: string;
  hash: string;
  previous_hash: string;
}

const COLUMNS = "global_position, stream_id, stream_version, type, data, metadata, recorded_at, hash, previous_hash";

// Stores on the same file within one process wake each other's subscriptions immediately; other
// processes are only seen by polling.
const localAppends = new EventEmitter();
localAppends.setMaxListeners(0);

// Lets verifyLedger reach the raw rows without putting the database handle on the public type.
const databases = new WeakMap<EventStore, Database.Database>();

/** The database behind a store returned by getSqliteEventStore, for verification. */
export function sqliteDatabaseOf(store: EventStore): Database.Database | undefined {
  return databases.get(store);
}

export function getSqliteEventStore(options: SqliteEventStoreOptions): SqliteEventStore {
  const { path } = options;
  const db = openLedgerDatabase(path, options);
  const channel = realpathSync(path);
  const clock = options.clock ?? (() => new Date());
  const subscriptions = new OpenSubscriptions({ readPage: (page) => readAllSync(page), pollIntervalMs: options.pollIntervalMs ?? 250 }, localAppends, channel);
  let closed = false;

  const stmt = (sql: string) => db.prepare(sql).safeIntegers(true);
  const headOf = stmt("SELECT stream_version, hash FROM events WHERE stream_id = ? ORDER BY stream_version DESC LIMIT 1");
  const insert = stmt(
    `INSERT INTO events (stream_id, stream_version, type, data, metadata, recorded_at, hash, previous_hash)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
  );
  const byStream = stmt(`SELECT ${COLUMNS} FROM events WHERE stream_id = ? AND stream_version >= ? ORDER BY stream_version LIMIT ?`);
  const byPosition = stmt(`SELECT ${COLUMNS} FROM events WHERE global_position > ? ORDER BY global_position LIMIT ?`);
  // instr(...) = 1 is "starts with" without LIKE's wildcards or substr's character counting.
  const byPositionAndPrefix = stmt(`SELECT ${COLUMNS} FROM events WHERE global_position > ? AND instr(stream_id, ?) = 1 ORDER BY global_position LIMIT ?`);

  const snapshotByKey = stmt("SELECT key, at, at_hash, schema_version, fold_version, state, checksum, saved_at FROM snapshots WHERE key = ?");
  const upsertSnapshot = stmt(
    `INSERT INTO snapshots (key, at, at_hash, schema_version, fold_version, state, checksum, saved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (key) DO UPDATE SET at = excluded.at, at_hash = excluded.at_hash, schema_version = excluded.schema_version,
       fold_version = excluded.fold_version, state = excluded.state, checksum = excluded.checksum, saved_at = excluded.saved_at`,
  );
  const deleteSnapshotsByPrefix = stmt("DELETE FROM snapshots WHERE instr(key, ?) = 1");

  const appendTx = db.transaction((stream: string, events: NewEvent[], expected: ExpectedVersion, at: Date): AppendResult => {
    const head = headOf.get(stream) as { stream_version: bigint; hash: string } | undefined;
    assertExpectedVersion(stream, expected, head?.stream_version);
    const sealed = sealEvents(stream, events, { version: head?.stream_version, hash: head?.hash ?? GENESIS_HASH }, at);
    let lastGlobalPosition = 0n;
    for (const e of sealed) {
      const r = insert.run(stream, e.version, e.type, e.dataJson, e.metadataJson, e.recordedAt, e.hash, e.previousHash);
      lastGlobalPosition = BigInt(r.lastInsertRowid);
    }
    return { nextExpectedVersion: sealed.at(-1)!.version, lastGlobalPosition };
  });

  const ensureOpen = (): void => {
    if (closed) throw new LedgerClosedError(`ledger ${path} is closed`);
  };

  const noLimit = (n: number | undefined): number => validateMaxCount(n) ?? -1;

  function readAllSync(opts: ReadAllOptions = {}): RecordedEvent[] {
    const from = opts.fromPosition ?? 0n;
    const limit = noLimit(opts.maxCount);
    const rows = opts.streamPrefix === undefined ? byPosition.all(from, limit) : byPositionAndPrefix.all(from, opts.streamPrefix, limit);
    return (rows as EventRow[]).map(toRecordedEvent);
  }

  const store: SqliteEventStore = {
    path,

    async append(stream, events, expectedVersion) {
      ensureOpen();
      validateAppendArguments(stream, events, expectedVersion);
      let result: AppendResult;
      try {
        result = appendTx.immediate(stream, events, expectedVersion, clock());
      } catch (err) {
        if ((err as { code?: unknown }).code !== "SQLITE_CONSTRAINT_UNIQUE") throw err;
        // Only reachable if something bypassed BEGIN IMMEDIATE; report it as the conflict it is.
        const current = (headOf.get(stream) as { stream_version: bigint } | undefined)?.stream_version;
        throw new WrongExpectedVersionError(stream, expectedVersion, current ?? "no_stream", { cause: err });
      }
      localAppends.emit(channel);
      return result;
    },

    async readStream(stream: string, opts: ReadStreamOptions = {}) {
      ensureOpen();
      validateStreamName(stream);
      const rows = byStream.all(stream, opts.fromVersion ?? 0n, noLimit(opts.maxCount)) as EventRow[];
      return rows.map(toRecordedEvent);
    },

    async readAll(opts?: ReadAllOptions) {
      ensureOpen();
      return readAllSync(opts);
    },

    subscribe(opts: SubscribeOptions, handler: EventHandler): Subscription {
      ensureOpen();
      return subscriptions.start(opts, handler);
    },

    async streamVersion(stream: string) {
      ensureOpen();
      validateStreamName(stream);
      return (headOf.get(stream) as { stream_version: bigint } | undefined)?.stream_version;
    },

    async readSnapshot(key: string) {
      ensureOpen();
      const row = snapshotByKey.get(key) as SnapshotRow | undefined;
      return row && toSnapshotRecord(row);
    },

    async writeSnapshot(record: SnapshotRecord) {
      ensureOpen();
      validateSnapshotRecord(record);
      const r = record;
      upsertSnapshot.run(r.key, r.at, r.atHash, r.schemaVersion, r.foldVersion, r.state, r.checksum, r.savedAt.toISOString());
    },

    async deleteSnapshots(keyPrefix: string) {
      ensureOpen();
      return Number(deleteSnapshotsByPrefix.run(keyPrefix).changes);
    },

    async close() {
      if (closed) return;
      closed = true;
      await subscriptions.closeAll();
      db.close();
    },
  };
  databases.set(store, db);
  return store;
}

interface SnapshotRow {
  key: string;
  at: bigint;
  at_hash: string;
  schema_version: bigint;
  fold_version: bigint;
  state: string;
  checksum: string;
  saved_at: string;
}

function toSnapshotRecord(row: SnapshotRow): SnapshotRecord {
  return {
    key: row.key,
    at: row.at,
    atHash: row.at_hash,
    schemaVersion: Number(row.schema_version),
    foldVersion: Number(row.fold_version),
    state: row.state,
    checksum: row.checksum,
    savedAt: new Date(row.saved_at),
  };
}

function toRecordedEvent(row: EventRow): RecordedEvent {
  return {
    stream: row.stream_id,
    version: row.stream_version,
    globalPosition: row.global_position,
    type: row.type,
    data: parseObject(row, "data"),
    metadata: parseObject(row, "metadata"),
    recordedAt: new Date(row.recorded_at),
    hash: row.hash,
    previousHash: row.previous_hash,
  };
}

function parseObject(row: EventRow, column: "data" | "metadata"): Record<string, unknown> {
  const parsed = tryParseObject(row[column]);
  if ("problem" in parsed) throw corrupt(row, `${column} ${parsed.problem}`, parsed.cause);
  return parsed.value;
}

function tryParseObject(text: string): { value: Record<string, unknown> } | { problem: string; cause?: unknown } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    return { problem: "is not valid JSON", cause };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return { problem: "is not a JSON object" };
  return { value: value as Record<string, unknown> };
}

function corrupt(row: EventRow, what: string, cause?: unknown): LedgerCorruptError {
  return new LedgerCorruptError(
    `Ledger event at global position ${row.global_position} (stream "${row.stream_id}" version ` + `${row.stream_version}) is unreadable: ${what}; run \`qreplica ledger verify\``,
    row.global_position,
    { cause },
  );
}

/**
 * Raw rows for verification, in global order. Undecodable rows are returned marked rather than
 * thrown, so one bad row is reported against its stream and the walk goes on.
 */
export function readChainRows(db: Database.Database, afterPosition: bigint, limit: number): ChainRow[] {
  const rows = db.prepare(`SELECT ${COLUMNS} FROM events WHERE global_position > ? ORDER BY global_position LIMIT ?`).safeIntegers(true).all(afterPosition, limit) as EventRow[];
  return rows.map((row) => {
    const base = {
      stream: row.stream_id,
      version: row.stream_version,
      globalPosition: row.global_position,
      type: row.type,
      // The hash covers recorded_at exactly as stored, so it is not round-tripped through Date.
      recordedAt: row.recorded_at,
      hash: row.hash,
      previousHash: row.previous_hash,
    };
    const data = tryParseObject(row.data);
    const metadata = tryParseObject(row.metadata);
    if ("problem" in data) return { ...base, data: {}, metadata: {}, unreadable: `data ${data.problem}` };
    if ("problem" in metadata) return { ...base, data: {}, metadata: {}, unreadable: `metadata ${metadata.problem}` };
    return { ...base, data: data.value, metadata: metadata.value };
  });
}
