/**
 * `qreplica ledger verify`: walks every event in global order and checks each stream's hash chain.
 * A SQLite ledger is read row by row from the file, so a row whose JSON was mangled is reported
 * against its stream instead of aborting the walk; any other store is read through the port.
 */
import Database from "better-sqlite3";
import { LedgerIntegrityError } from "./errors.js";
import type { EventStore } from "./eventStore.js";
import { ChainVerifier, type ChainRow, type VerifyReport } from "./hashChain.js";
import { inspect } from "./sqlite/schema.js";
import { readChainRows, sqliteDatabaseOf } from "./sqlite/sqliteEventStore.js";

export type VerifiableLedger = EventStore | Database.Database;

/** Raw stored rows in global order after a position, undecodable ones marked (see ChainRow). */
export type ChainRowReader = (afterPosition: bigint, limit: number) => Promise<ChainRow[]>;

const chainRowReaders = new WeakMap<EventStore, ChainRowReader>();

/**
 * Lets an adapter hand the verifier its raw rows, so a row whose JSON was edited on the server is
 * reported against its stream like a SQLite one instead of aborting the walk.
 */
export function registerChainRowReader(store: EventStore, reader: ChainRowReader): void {
  chainRowReaders.set(store, reader);
}

export async function verifyLedger(source: VerifiableLedger, opts: { pageSize?: number } = {}): Promise<VerifyReport> {
  const pageSize = opts.pageSize ?? 1000;
  const verifier = new ChainVerifier();
  const db = source instanceof Database ? source : sqliteDatabaseOf(source);
  const rawReader = source instanceof Database ? undefined : chainRowReaders.get(source);
  let after = 0n;
  for (;;) {
    let page: ChainRow[];
    if (db) {
      if (after === 0n) inspect(db);
      page = readChainRows(db, after, pageSize);
    } else if (rawReader) {
      page = await rawReader(after, pageSize);
    } else {
      const events = await (source as EventStore).readAll({ fromPosition: after, maxCount: pageSize });
      page = events.map((e) => ({ ...e, recordedAt: e.recordedAt.toISOString() }));
    }
    for (const row of page) verifier.add(row);
    if (page.length < pageSize) return verifier.report();
    after = page.at(-1)!.globalPosition;
  }
}

/** Verifies and throws LedgerIntegrityError (carrying every problem) unless the ledger is intact. */
export async function assertLedgerIntact(source: VerifiableLedger): Promise<VerifyReport> {
  const report = await verifyLedger(source);
  if (!report.ok) throw new LedgerIntegrityError(report.problems);
  return report;
}
