/**
 * Opening, identifying and migrating a SQLite ledger file.
 *
 * Identity lives in the file header: `PRAGMA application_id` marks the file as a qreplica ledger
 * and `PRAGMA user_version` is its schema version. Both are checked before anything is written, so
 * pointing qreplica at the wrong file (another program's database, a newer qreplica's ledger)
 * fails with the file named instead of modifying it.
 */
import { existsSync } from "node:fs";
import Database from "better-sqlite3";
import type { Logger } from "../../common/logger.js";
import { errorMessage } from "../../common/errors.js";
import { LedgerOpenError } from "../errors.js";

/** "qrlg" in ASCII: marks the file as a qreplica ledger. */
export const LEDGER_APPLICATION_ID = 0x71726c67;
export const LEDGER_SCHEMA_VERSION = 2;

/** Index i migrates schema version i to i + 1. Never edit a shipped entry: append a new one. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE events (
     global_position INTEGER PRIMARY KEY AUTOINCREMENT,
     stream_id       TEXT    NOT NULL,
     stream_version  INTEGER NOT NULL CHECK (stream_version >= 0),
     type            TEXT    NOT NULL,
     data            TEXT    NOT NULL,
     metadata        TEXT    NOT NULL,
     recorded_at     TEXT    NOT NULL,
     hash            TEXT    NOT NULL,
     previous_hash   TEXT    NOT NULL,
     UNIQUE (stream_id, stream_version)
   ) STRICT;
   -- History is never rewritten by qreplica; these stop accidental edits, not a determined
   -- tamperer (who can drop them, which is what verifyLedger is for).
   CREATE TRIGGER events_no_update BEFORE UPDATE ON events
     BEGIN SELECT RAISE(ABORT, 'qreplica ledger events are append-only'); END;
   CREATE TRIGGER events_no_delete BEFORE DELETE ON events
     BEGIN SELECT RAISE(ABORT, 'qreplica ledger events are append-only'); END;`,
  // Snapshots are a cache of folds (src/ledger/snapshots.ts): replaced in place, never trusted
  // over the events, so deliberately outside the append-only rule and the hash chain.
  `CREATE TABLE snapshots (
     key            TEXT    PRIMARY KEY,
     at             INTEGER NOT NULL,
     at_hash        TEXT    NOT NULL,
     schema_version INTEGER NOT NULL,
     fold_version   INTEGER NOT NULL,
     state          TEXT    NOT NULL,
     checksum       TEXT    NOT NULL,
     saved_at       TEXT    NOT NULL
   ) STRICT;`,
];

export interface OpenLedgerOptions {
  /** Create an empty ledger when the file is missing (default true). */
  create?: boolean;
  readonly?: boolean;
  /** How long a writer waits for another process's write lock (default 5000 ms). */
  busyTimeoutMs?: number;
  logger?: Logger;
}

export function openLedgerDatabase(path: string, opts: OpenLedgerOptions = {}): Database.Database {
  const create = (opts.create ?? true) && !opts.readonly;
  if (!create && !existsSync(path)) {
    throw new LedgerOpenError(`No qreplica ledger at ${path}: the file does not exist`, path);
  }
  let db: Database.Database;
  try {
    db = new Database(path, {
      fileMustExist: !create,
      readonly: opts.readonly ?? false,
      timeout: opts.busyTimeoutMs ?? 5000,
    });
  } catch (err) {
    throw new LedgerOpenError(`Cannot open ledger ${path}: ${errorMessage(err)}`, path, { cause: err });
  }
  try {
    db.defaultSafeIntegers(true);
    const state = inspect(db, path);
    if (state === "fresh" && opts.readonly) {
      throw new LedgerOpenError(`${path} is an empty SQLite database, not a qreplica ledger`, path);
    }
    if (!opts.readonly) {
      // WAL: readers never block the writer and a commit is one sequential WAL write.
      // synchronous=FULL: that write is fsynced before COMMIT returns, so an acknowledged append
      // survives power loss, not only a process crash (NORMAL would only guarantee the latter).
      const mode = db.pragma("journal_mode = WAL", { simple: true });
      if (mode !== "wal") throw new LedgerOpenError(`${path}: could not enable WAL (journal_mode is ${String(mode)})`, path);
      db.pragma("synchronous = FULL");
      migrate(db, path, opts.logger);
    }
    return db;
  } catch (err) {
    db.close();
    if (err instanceof LedgerOpenError) throw err;
    if ((err as { code?: unknown }).code === "SQLITE_NOTADB") {
      throw new LedgerOpenError(`${path} is not a SQLite database, so not a qreplica ledger`, path, { cause: err });
    }
    throw new LedgerOpenError(`Cannot open ledger ${path}: ${errorMessage(err)}`, path, { cause: err });
  }
}

/**
 * Throws unless `db` holds a qreplica ledger this code can read. "fresh" means an empty database
 * a ledger may be created in.
 */
export function inspect(db: Database.Database, path: string = db.name): "ledger" | "fresh" {
  const appId = Number(db.pragma("application_id", { simple: true }));
  const version = Number(db.pragma("user_version", { simple: true }));
  if (appId === LEDGER_APPLICATION_ID) {
    if (version > LEDGER_SCHEMA_VERSION) {
      throw new LedgerOpenError(
        `${path} is a qreplica ledger with schema version ${version}, newer than this qreplica ` + `understands (${LEDGER_SCHEMA_VERSION}); upgrade qreplica to open it`,
        path,
      );
    }
    return "ledger";
  }
  const objects = Number(db.prepare("SELECT count(*) FROM sqlite_master").pluck().safeIntegers(true).get());
  if (appId === 0 && version === 0 && objects === 0) return "fresh";
  throw new LedgerOpenError(`${path} is a SQLite database but not a qreplica ledger (application_id ${appId}, ${objects} schema object(s))`, path);
}

function migrate(db: Database.Database, path: string, logger?: Logger): void {
  // IMMEDIATE takes the write lock before re-reading the version, so two processes opening a
  // fresh file at once cannot both create the schema.
  db.transaction(() => {
    inspect(db, path);
    const from = Number(db.pragma("user_version", { simple: true }));
    if (from === LEDGER_SCHEMA_VERSION) return;
    for (let v = from; v < LEDGER_SCHEMA_VERSION; v++) db.exec(MIGRATIONS[v]!);
    db.pragma(`application_id = ${LEDGER_APPLICATION_ID}`);
    db.pragma(`user_version = ${LEDGER_SCHEMA_VERSION}`);
    logger?.info({ path, from, to: LEDGER_SCHEMA_VERSION }, "ledger schema migrated");
  }).immediate();
}
