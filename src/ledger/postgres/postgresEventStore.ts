/**
 * The shared ledger on PostgreSQL (`pg`): one `events` table with a global position, per-stream
 * versions under UNIQUE(stream_id, stream_version), the hash chain computed here exactly as for
 * SQLite, snapshots beside it, and LISTEN/NOTIFY (with polling as the fallback) for subscriptions.
 *
 * Readers must never see a gap that fills in later: a subscription's checkpoint would step past
 * the late event for ever. With a plain identity column that happens when transaction A takes
 * position 5, B takes 6, and B commits first. Two known cures: readers stop below the oldest
 * in-flight transaction (pg_current_snapshot()/xmin, as Emmett and Marten do), or writers take
 * positions in commit order. We take the second: every append holds one transaction-scoped
 * advisory lock per ledger from before it reads the stream head until its COMMIT, so positions
 * are drawn and made visible strictly in order, and every plain `SELECT ... WHERE global_position
 * > checkpoint` is safe with no visibility arithmetic on the read side. The price is that appends
 * to one ledger are serialised, which a DR ledger (a few events per cycle per VM) never feels; the
 * lock also makes "read head, check expected version, insert" one atomic step, the UNIQUE
 * constraint staying as the last line of defence. A crashed writer's lock goes with its session.
 */
import { EventEmitter } from "node:events";
import pg from "pg";
import type { Logger } from "../../common/logger.js";
import { errorMessage } from "../../common/errors.js";
import { faultPoint } from "../../common/faultPoints.js";
import { LedgerClosedError, WrongExpectedVersionError } from "../errors.js";
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
import { GENESIS_HASH, sealEvents } from "../hashChain.js";
import { assertContinuesChain } from "../importChecks.js";
import { validateSnapshotRecord, type SnapshotRecord } from "../snapshots.js";
import { chainRowOf, decodeStoredEvent, type StoredEventRow } from "../storedRows.js";
import { OpenSubscriptions } from "../subscription.js";
import { registerChainRowReader } from "../verify.js";
import { listen, type Listener } from "./listener.js";
import { DEFAULT_PG_SCHEMA, advisoryKey, migratePostgresLedger, redactUrl, validateSchemaName } from "./schema.js";

export interface PostgresEventStoreOptions {
  /** postgres://user:password@host:port/database (libpq-style parameters such as sslmode work too). */
  url: string;
  /** The PostgreSQL schema holding this ledger (default "qreplica"). */
  schema?: string;
  /** Re-read interval for subscriptions when no notification arrives (default 1000 ms). */
  pollIntervalMs?: number;
  /** Connections in the pool (default 5). */
  poolSize?: number;
  clock?: () => Date;
  logger?: Logger;
}

export interface PostgresEventStore extends EventStore {
  /** The URL with its password masked. */
  readonly location: string;
  readonly schema: string;
  /**
   * Stores already-sealed events exactly as given (same versions, recordedAt and hashes), for
   * `ledger migrate`: each must continue its stream's chain here, or nothing of the batch is stored.
   */
  importVerbatim(events: readonly RecordedEvent[]): Promise<void>;
}

interface EventDbRow {
  global_position: string;
  stream_id: string;
  stream_version: string;
  type: string;
  data: string;
  metadata: string;
  recorded_at: string;
  hash: string;
  previous_hash: string;
}

interface SnapshotDbRow {
  key: string;
  at: string;
  at_hash: string;
  schema_version: number;
  fold_version: number;
  state: string;
  checksum: string;
  saved_at: string;
}

const COLUMNS = "global_position, stream_id, stream_version, type, data, metadata, recorded_at, hash, previous_hash";
const UNIQUE_VIOLATION = "23505";

/** Opens (creating or upgrading the schema if needed) a ledger in a PostgreSQL database. */
export async function getPostgresEventStore(options: PostgresEventStoreOptions): Promise<PostgresEventStore> {
  const schema = options.schema ?? DEFAULT_PG_SCHEMA;
  const location = `${redactUrl(options.url)} (schema ${schema})`;
  validateSchemaName(schema, location);
  const pool = new pg.Pool({ connectionString: options.url, max: options.poolSize ?? 5 });
  // An idle pooled connection that dies (server restart) must not crash the site: the next query
  // opens a new one.
  pool.on("error", (err) => options.logger?.warn({ ledger: location, err: errorMessage(err) }, "PostgreSQL ledger connection lost"));
  try {
    await migratePostgresLedger(pool, schema, location, options.logger);
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw err;
  }
  const channel = `qreplica_ledger_${schema}`;
  const appended = new EventEmitter();
  appended.setMaxListeners(0);
  const listener = await listen({ url: options.url, channel, appended, location, ...(options.logger ? { logger: options.logger } : {}) });
  return buildStore({ ...options, schema, location, pool, listener, channel, appended });
}

interface Internals extends PostgresEventStoreOptions {
  schema: string;
  location: string;
  pool: pg.Pool;
  listener: Listener;
  channel: string;
  appended: EventEmitter;
}

function buildStore(o: Internals): PostgresEventStore {
  const { pool, schema, location, appended } = o;
  const t = `${schema}.events`;
  const clock = o.clock ?? (() => new Date());
  const appendKey = advisoryKey(schema, "append");
  const subscriptions = new OpenSubscriptions({ readPage: (page) => readAll(page), pollIntervalMs: o.pollIntervalMs ?? 1000 }, appended, "appended");
  let closed = false;

  const ensureOpen = (): void => {
    if (closed) throw new LedgerClosedError(`ledger ${location} is closed`);
  };

  async function appendTx(client: pg.PoolClient, stream: string, events: NewEvent[], expected: ExpectedVersion): Promise<AppendResult> {
    await client.query("SELECT pg_advisory_xact_lock($1)", [appendKey]);
    const head = await client.query<{ stream_version: string; hash: string }>(`SELECT stream_version, hash FROM ${t} WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT 1`, [
      stream,
    ]);
    const current = head.rows[0] ? BigInt(head.rows[0].stream_version) : undefined;
    assertExpectedVersion(stream, expected, current);
    const sealed = sealEvents(stream, events, { version: current, hash: head.rows[0]?.hash ?? GENESIS_HASH }, clock());
    let lastGlobalPosition = 0n;
    for (const e of sealed) {
      const r = await client.query<{ global_position: string }>(
        `INSERT INTO ${t} (stream_id, stream_version, type, data, metadata, recorded_at, hash, previous_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING global_position`,
        [stream, e.version.toString(), e.type, e.dataJson, e.metadataJson, e.recordedAt, e.hash, e.previousHash],
      );
      lastGlobalPosition = BigInt(r.rows[0]!.global_position);
    }
    // Test-only crash window (inert unless QREPLICA_FAULT names it); keyed to a cycle's commit so a
    // site dies mid-replication rather than in the appends of its own start.
    if (events.some((e) => e.type === "CycleCommitted")) faultPoint("crash-mid-ledger-append");
    // Delivered to listeners at COMMIT, never for a rolled-back append.
    await client.query("SELECT pg_notify($1, '')", [o.channel]);
    return { nextExpectedVersion: sealed.at(-1)!.version, lastGlobalPosition };
  }

  async function readRows(sql: string, params: unknown[]): Promise<StoredEventRow[]> {
    const r = await pool.query<EventDbRow>(sql, params);
    return r.rows.map(fromDb);
  }

  async function readAllRows(opts: ReadAllOptions = {}): Promise<StoredEventRow[]> {
    const from = (opts.fromPosition ?? 0n).toString();
    const limit = validateMaxCount(opts.maxCount) ?? null;
    return opts.streamPrefix === undefined
      ? readRows(`SELECT ${COLUMNS} FROM ${t} WHERE global_position > $1 ORDER BY global_position LIMIT $2`, [from, limit])
      : readRows(`SELECT ${COLUMNS} FROM ${t} WHERE global_position > $1 AND starts_with(stream_id, $3) ORDER BY global_position LIMIT $2`, [from, limit, opts.streamPrefix]);
  }

  const readAll = async (opts?: ReadAllOptions): Promise<RecordedEvent[]> => (await readAllRows(opts)).map((r) => decodeStoredEvent(r, location));

  const store: PostgresEventStore = {
    location,
    schema,

    async append(stream, events, expectedVersion) {
      ensureOpen();
      validateAppendArguments(stream, events, expectedVersion);
      const client = await pool.connect();
      let broken: Error | undefined;
      try {
        await client.query("BEGIN");
        const result = await appendTx(client, stream, events, expectedVersion);
        await client.query("COMMIT");
        appended.emit("appended");
        return result;
      } catch (err) {
        await client.query("ROLLBACK").catch((e: Error) => (broken = e));
        if ((err as { code?: unknown }).code !== UNIQUE_VIOLATION) throw err;
        // Only reachable if a writer bypassed the append lock; report it as the conflict it is.
        const current = await store.streamVersion(stream);
        throw new WrongExpectedVersionError(stream, expectedVersion, current ?? "no_stream", { cause: err });
      } finally {
        client.release(broken);
      }
    },

    async readStream(stream: string, opts: ReadStreamOptions = {}) {
      ensureOpen();
      validateStreamName(stream);
      const limit = validateMaxCount(opts.maxCount) ?? null;
      const rows = await readRows(`SELECT ${COLUMNS} FROM ${t} WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3`, [
        stream,
        (opts.fromVersion ?? 0n).toString(),
        limit,
      ]);
      return rows.map((r) => decodeStoredEvent(r, location));
    },

    async readAll(opts?: ReadAllOptions) {
      ensureOpen();
      return readAll(opts);
    },

    subscribe(opts: SubscribeOptions, handler: EventHandler): Subscription {
      ensureOpen();
      return subscriptions.start(opts, handler);
    },

    async streamVersion(stream: string) {
      ensureOpen();
      validateStreamName(stream);
      const r = await pool.query<{ v: string | null }>(`SELECT max(stream_version) AS v FROM ${t} WHERE stream_id = $1`, [stream]);
      const v = r.rows[0]?.v;
      return v === null || v === undefined ? undefined : BigInt(v);
    },

    async readSnapshot(key: string) {
      ensureOpen();
      const r = await pool.query<SnapshotDbRow>(
        `SELECT key, at::text AS at, at_hash, schema_version, fold_version, state, checksum, saved_at FROM ${schema}.snapshots WHERE key = $1`,
        [key],
      );
      const row = r.rows[0];
      return (
        row && {
          key: row.key,
          at: BigInt(row.at),
          atHash: row.at_hash,
          schemaVersion: row.schema_version,
          foldVersion: row.fold_version,
          state: row.state,
          checksum: row.checksum,
          savedAt: new Date(row.saved_at),
        }
      );
    },

    async writeSnapshot(record: SnapshotRecord) {
      ensureOpen();
      validateSnapshotRecord(record);
      const r = record;
      await pool.query(
        `INSERT INTO ${schema}.snapshots (key, at, at_hash, schema_version, fold_version, state, checksum, saved_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (key) DO UPDATE SET at = excluded.at, at_hash = excluded.at_hash, schema_version = excluded.schema_version,
           fold_version = excluded.fold_version, state = excluded.state, checksum = excluded.checksum, saved_at = excluded.saved_at`,
        [r.key, r.at.toString(), r.atHash, r.schemaVersion, r.foldVersion, r.state, r.checksum, r.savedAt.toISOString()],
      );
    },

    async deleteSnapshots(keyPrefix: string) {
      ensureOpen();
      const r = await pool.query(`DELETE FROM ${schema}.snapshots WHERE starts_with(key, $1)`, [keyPrefix]);
      return r.rowCount ?? 0;
    },

    async importVerbatim(events) {
      ensureOpen();
      if (events.length === 0) return;
      const client = await pool.connect();
      let broken: Error | undefined;
      try {
        await client.query("BEGIN");
        await client.query("SELECT pg_advisory_xact_lock($1)", [appendKey]);
        const heads = new Map<string, { version: bigint | undefined; hash: string }>();
        for (const e of events) {
          let head = heads.get(e.stream);
          if (!head) {
            const r = await client.query<{ stream_version: string; hash: string }>(
              `SELECT stream_version, hash FROM ${t} WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT 1`,
              [e.stream],
            );
            head = { version: r.rows[0] ? BigInt(r.rows[0].stream_version) : undefined, hash: r.rows[0]?.hash ?? GENESIS_HASH };
          }
          const row = assertContinuesChain(e, head);
          await client.query(
            `INSERT INTO ${t} (stream_id, stream_version, type, data, metadata, recorded_at, hash, previous_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
            [e.stream, e.version.toString(), e.type, row.dataJson, row.metadataJson, row.recordedAt, e.hash, e.previousHash],
          );
          heads.set(e.stream, { version: e.version, hash: e.hash });
        }
        await client.query("SELECT pg_notify($1, '')", [o.channel]);
        await client.query("COMMIT");
        appended.emit("appended");
      } catch (err) {
        await client.query("ROLLBACK").catch((e: Error) => (broken = e));
        throw err;
      } finally {
        client.release(broken);
      }
    },

    async close() {
      if (closed) return;
      closed = true;
      await subscriptions.closeAll();
      await o.listener.stop();
      await pool.end();
    },
  };
  registerChainRowReader(store, async (after, limit) => (await readAllRows({ fromPosition: after, maxCount: limit })).map(chainRowOf));
  return store;
}

function fromDb(r: EventDbRow): StoredEventRow {
  return {
    globalPosition: BigInt(r.global_position),
    stream: r.stream_id,
    version: BigInt(r.stream_version),
    type: r.type,
    data: r.data,
    metadata: r.metadata,
    recordedAt: r.recorded_at,
    hash: r.hash,
    previousHash: r.previous_hash,
  };
}
