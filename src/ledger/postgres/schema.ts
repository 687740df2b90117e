/**
 * Creating and identifying a qreplica ledger inside a PostgreSQL database.
 *
 * A ledger lives in one PostgreSQL schema (default `qreplica`), so several independent ledgers
 * (e.g. one per site when sites must not share streams) can sit in one database. The schema's
 * `ledger_meta` row says it is a qreplica ledger and which layout version it has; it is checked
 * before anything is written, as the SQLite file's application_id and user_version are.
 */
import { createHash } from "node:crypto";
import type pg from "pg";
import type { Logger } from "../../common/logger.js";
import { errorMessage } from "../../common/errors.js";
import { LedgerOpenError } from "../errors.js";

export const PG_LEDGER_SCHEMA_VERSION = 1;
export const DEFAULT_PG_SCHEMA = "qreplica";

/** Lower-case identifiers only: they are interpolated into SQL, never quoted user text. */
const IDENTIFIER = /^[a-z_][a-z0-9_]{0,39}$/;

export function validateSchemaName(schema: string, where: string): void {
  if (!IDENTIFIER.test(schema)) {
    throw new LedgerOpenError(`PostgreSQL schema name ${JSON.stringify(schema)} is not allowed: use 1-40 characters a-z, 0-9 and _, starting with a letter or _`, where);
  }
}

/** Index i migrates layout version i to i + 1. Never edit a shipped entry: append a new one. */
const MIGRATIONS: readonly ((s: string) => string)[] = [
  (s) => `
    CREATE TABLE ${s}.events (
      -- Identity with the sequence's default CACHE 1: values are handed out in call order, which
      -- the append lock (see postgresEventStore.ts) turns into commit order.
      global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      stream_id       text   NOT NULL,
      stream_version  bigint NOT NULL CHECK (stream_version >= 0),
      type            text   NOT NULL,
      -- text, not jsonb: the hash covers these exact bytes (jsonb would renormalise numbers).
      data            text   NOT NULL,
      metadata        text   NOT NULL,
      recorded_at     text   NOT NULL,
      hash            text   NOT NULL,
      previous_hash   text   NOT NULL,
      UNIQUE (stream_id, stream_version)
    );
    -- History is never rewritten by qreplica; this stops accidental edits, not a superuser
    -- (who can drop it, which is what ledger verify is for).
    CREATE FUNCTION ${s}.events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'qreplica ledger events are append-only'; END $$;
    CREATE TRIGGER events_no_change BEFORE UPDATE OR DELETE ON ${s}.events
      FOR EACH ROW EXECUTE FUNCTION ${s}.events_append_only();
    CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON ${s}.events
      FOR EACH STATEMENT EXECUTE FUNCTION ${s}.events_append_only();
    -- A cache of folds (snapshots.ts), replaced in place: outside the append-only rule.
    CREATE TABLE ${s}.snapshots (
      key            text    PRIMARY KEY,
      at             numeric(20, 0) NOT NULL,
      at_hash        text    NOT NULL,
      schema_version integer NOT NULL,
      fold_version   integer NOT NULL,
      state          text    NOT NULL,
      checksum       text    NOT NULL,
      saved_at       text    NOT NULL
    );`,
];

/** A 64-bit advisory lock key per ledger schema and purpose. */
export function advisoryKey(schema: string, purpose: "append" | "migrate"): string {
  return BigInt.asIntN(64, BigInt(`0x${createHash("sha256").update(`qreplica-ledger:${schema}:${purpose}`).digest("hex").slice(0, 16)}`)).toString();
}

/** Creates or upgrades the ledger in `schema`; refuses a schema that holds something else. */
export async function migratePostgresLedger(pool: pg.Pool, schema: string, where: string, logger?: Logger): Promise<void> {
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    throw new LedgerOpenError(`Cannot reach the PostgreSQL ledger ${where}: ${errorMessage(err)}; check the URL and that the server is up`, where, { cause: err });
  }
  try {
    await client.query("BEGIN");
    // Two processes opening a fresh database at once must not both create the tables.
    await client.query("SELECT pg_advisory_xact_lock($1)", [advisoryKey(schema, "migrate")]);
    const from = await layoutVersion(client, schema, where);
    if (from === PG_LEDGER_SCHEMA_VERSION) {
      await client.query("COMMIT");
      return;
    }
    if (from === 0) {
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
      await client.query(`CREATE TABLE ${schema}.ledger_meta (key text PRIMARY KEY, value text NOT NULL)`);
      await client.query(`INSERT INTO ${schema}.ledger_meta VALUES ('application', 'qreplica-ledger'), ('schema_version', '0')`);
    }
    for (let v = from; v < PG_LEDGER_SCHEMA_VERSION; v++) await client.query(MIGRATIONS[v]!(schema));
    await client.query(`UPDATE ${schema}.ledger_meta SET value = $1 WHERE key = 'schema_version'`, [String(PG_LEDGER_SCHEMA_VERSION)]);
    await client.query("COMMIT");
    logger?.info({ ledger: where, schema, from, to: PG_LEDGER_SCHEMA_VERSION }, "ledger schema migrated");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    if (err instanceof LedgerOpenError) throw err;
    throw new LedgerOpenError(`Cannot open the PostgreSQL ledger ${where}: ${errorMessage(err)}`, where, { cause: err });
  } finally {
    client.release();
  }
}

/** 0 for a missing or empty schema; throws if the schema holds something that is not our ledger. */
async function layoutVersion(client: pg.PoolClient, schema: string, where: string): Promise<number> {
  const tables = await client.query<{ table_name: string }>("SELECT table_name FROM information_schema.tables WHERE table_schema = $1", [schema]);
  if (tables.rowCount === 0) return 0;
  if (!tables.rows.some((r) => r.table_name === "ledger_meta")) {
    throw new LedgerOpenError(`${where}: schema "${schema}" holds tables but is not a qreplica ledger; choose another schema`, where);
  }
  const meta = await client.query<{ key: string; value: string }>(`SELECT key, value FROM ${schema}.ledger_meta`);
  const get = (k: string) => meta.rows.find((r) => r.key === k)?.value;
  if (get("application") !== "qreplica-ledger") {
    throw new LedgerOpenError(`${where}: schema "${schema}" is not a qreplica ledger; choose another schema`, where);
  }
  const version = Number(get("schema_version"));
  if (version > PG_LEDGER_SCHEMA_VERSION) {
    throw new LedgerOpenError(
      `${where}: schema "${schema}" is a qreplica ledger with layout version ${version}, newer than this qreplica understands ` +
        `(${PG_LEDGER_SCHEMA_VERSION}); upgrade qreplica to open it`,
      where,
    );
  }
  return version;
}

/** The URL without its password, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(unparseable PostgreSQL URL)";
  }
}
