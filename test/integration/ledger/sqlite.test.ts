import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { LedgerCorruptError, LedgerIntegrityError, LedgerOpenError, assertLedgerIntact, getSqliteEventStore, verifyLedger, type NewEvent } from "../../../src/ledger/index.js";
import { sqliteDatabaseOf } from "../../../src/ledger/sqlite/sqliteEventStore.js";
import { eventStoreContract, waitFor } from "../../unit/ledger/eventStoreContract.js";

const dir = mkdtempSync(join(tmpdir(), "qreplica-ledger-"));
let n = 0;
const freshPath = () => join(dir, `ledger-${++n}.db`);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

eventStoreContract("sqlite", () => getSqliteEventStore({ path: freshPath() }));

const ev = (type: string, data: Record<string, unknown> = {}): NewEvent => ({ type, data });

/** A closed ledger with stream "a" (versions 0..4) and stream "b" (0..2), interleaved. */
async function seededLedger(): Promise<string> {
  const path = freshPath();
  const store = getSqliteEventStore({ path });
  await store.append("a", [ev("A0", { n: 0 }), ev("A1", { n: 1 })], "no_stream");
  await store.append("b", [ev("B0"), ev("B1")], "no_stream");
  await store.append("a", [ev("A2", { n: 2 }), ev("A3", { n: 3 }), ev("A4", { n: 4 })], 1n);
  await store.append("b", [ev("B2")], 1n);
  await store.close();
  return path;
}

/** Edits the file the way someone bypassing qreplica would: raw SQL, append-only triggers dropped. */
function tamper(path: string, sql: string): void {
  const db = new Database(path);
  db.exec("DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete;");
  db.exec(sql);
  db.close();
}

async function verifyFile(path: string) {
  const db = new Database(path, { readonly: true });
  try {
    return await verifyLedger(db);
  } finally {
    db.close();
  }
}

describe("SQLite ledger file", () => {
  it("is a STRICT table in WAL mode with synchronous=FULL on the store's connection", async () => {
    const path = freshPath();
    const store = getSqliteEventStore({ path });
    const db = sqliteDatabaseOf(store)!;
    expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
    expect(Number(db.pragma("synchronous", { simple: true }))).toBe(2);
    const table = db.prepare("SELECT strict FROM pragma_table_list WHERE name = 'events'").get() as { strict: bigint };
    expect(Number(table.strict)).toBe(1);
    await store.close();
  });

  it("keeps everything across close and reopen, and continues the chains", async () => {
    const path = await seededLedger();
    const before = await verifyFile(path);
    const store = getSqliteEventStore({ path });
    const all = await store.readAll();
    expect(all.map((e) => e.type)).toEqual(["A0", "A1", "B0", "B1", "A2", "A3", "A4", "B2"]);
    expect(await store.streamVersion("a")).toBe(4n);
    const r = await store.append("a", [ev("A5")], 4n);
    expect(r.nextExpectedVersion).toBe(5n);
    expect(r.lastGlobalPosition).toBe(all.at(-1)!.globalPosition + 1n);
    await store.close();

    const reopened = getSqliteEventStore({ path });
    expect((await reopened.readAll()).slice(0, 8)).toEqual(all);
    expect(await verifyLedger(reopened)).toEqual({ ...before, events: 9 });
    await reopened.close();
  });

  it("refuses in-place edits through its append-only triggers", async () => {
    const path = await seededLedger();
    const db = new Database(path);
    expect(() => db.exec("UPDATE events SET type = 'X' WHERE global_position = 1")).toThrow(/append-only/);
    expect(() => db.exec("DELETE FROM events WHERE global_position = 1")).toThrow(/append-only/);
    db.close();
  });

  it("wakes subscriptions of other stores on the same file in this process without polling", async () => {
    const path = freshPath();
    const writer = getSqliteEventStore({ path });
    const reader = getSqliteEventStore({ path, pollIntervalMs: 60_000 });
    const seen: string[] = [];
    const sub = reader.subscribe({}, (e) => void seen.push(e.type));
    await sub.caughtUp;
    await writer.append("s", [ev("A")], "no_stream");
    await waitFor(() => seen.length === 1, "notification", 2000);
    await Promise.all([writer.close(), reader.close()]);
  });
});

describe("SQLite ledger opening", () => {
  it("names a file that is not SQLite at all", () => {
    const path = freshPath();
    writeFileSync(path, "this is a text file, long enough to be mistaken for nothing in particular".repeat(20));
    expect(() => getSqliteEventStore({ path })).toThrow(LedgerOpenError);
    expect(() => getSqliteEventStore({ path })).toThrow(`${path} is not a SQLite database`);
  });

  it("names another program's SQLite database and leaves it untouched", () => {
    const path = freshPath();
    const other = new Database(path);
    other.exec("CREATE TABLE customers (id INTEGER PRIMARY KEY)");
    other.close();
    const bytes = readFileSync(path);
    expect(() => getSqliteEventStore({ path })).toThrow(`${path} is a SQLite database but not a qreplica ledger`);
    expect(readFileSync(path).equals(bytes)).toBe(true);
  });

  it("names a ledger written by a newer schema", async () => {
    const path = await seededLedger();
    const db = new Database(path);
    db.pragma("user_version = 7");
    db.close();
    expect(() => getSqliteEventStore({ path })).toThrow(/schema version 7, newer than this qreplica understands \(2\)/);
    expect(() => getSqliteEventStore({ path })).toThrow(path);
  });

  it("migrates a schema-1 ledger (no snapshots table) and keeps its events", async () => {
    const path = await seededLedger();
    const db = new Database(path);
    db.exec("DROP TABLE snapshots");
    db.pragma("user_version = 1");
    db.close();
    const store = getSqliteEventStore({ path });
    expect((await store.readAll()).length).toBe(8);
    expect(await store.readSnapshot("relationship:x")).toBeUndefined();
    expect((await verifyLedger(store)).ok).toBe(true);
    await store.close();
    const check = new Database(path, { readonly: true });
    expect(check.pragma("user_version", { simple: true })).toBe(2);
    check.close();
  });

  it("does not create a missing file when create is false", () => {
    const path = freshPath();
    expect(() => getSqliteEventStore({ path, create: false })).toThrow(`No qreplica ledger at ${path}`);
    expect(existsSync(path)).toBe(false);
  });
});

describe("SQLite ledger verification", () => {
  it("passes an untouched ledger", async () => {
    const report = await verifyFile(await seededLedger());
    expect(report).toEqual({ ok: true, streams: 2, events: 8, problems: [] });
  });

  it.each([
    ["data", `UPDATE events SET data = '{"n":999}' WHERE stream_id = 'a' AND stream_version = 2`, /modified/],
    ["type", `UPDATE events SET type = 'Forged' WHERE stream_id = 'a' AND stream_version = 2`, /modified/],
    ["metadata", `UPDATE events SET metadata = '{"by":"mallory"}' WHERE stream_id = 'a' AND stream_version = 2`, /modified/],
    ["recorded_at", `UPDATE events SET recorded_at = '2001-01-01T00:00:00.000Z' WHERE stream_id = 'a' AND stream_version = 2`, /modified/],
    ["hash", `UPDATE events SET hash = '${"ab".repeat(32)}' WHERE stream_id = 'a' AND stream_version = 2`, /stored hash/],
    ["data (to invalid JSON)", `UPDATE events SET data = '{"n":' WHERE stream_id = 'a' AND stream_version = 2`, /data is not valid JSON/],
  ])("detects a tampered %s and names the stream and version", async (_column, sql, reason) => {
    const path = await seededLedger();
    tamper(path, sql);
    const report = await verifyFile(path);
    expect(report.ok).toBe(false);
    expect(report.streams).toBe(2);
    expect(report.events).toBe(8);
    expect(report.problems).toEqual([{ stream: "a", version: 2n, globalPosition: 5n, reason: expect.stringMatching(reason) }]);
  });

  it("detects a deleted middle row", async () => {
    const path = await seededLedger();
    tamper(path, "DELETE FROM events WHERE stream_id = 'a' AND stream_version = 2");
    const report = await verifyFile(path);
    expect(report.problems).toEqual([{ stream: "a", version: 3n, globalPosition: 6n, reason: "version 2 missing before version 3" }]);
  });

  it("detects a row moved to another stream and verifies through an open store too", async () => {
    const path = await seededLedger();
    tamper(path, "UPDATE events SET stream_id = 'a', stream_version = 5 WHERE stream_id = 'b' AND stream_version = 2");
    const store = getSqliteEventStore({ path });
    const report = await verifyLedger(store);
    expect(report.problems).toEqual([{ stream: "a", version: 5n, globalPosition: 8n, reason: expect.stringMatching(/previousHash/) }]);
    await expect(assertLedgerIntact(store)).rejects.toBeInstanceOf(LedgerIntegrityError);
    await store.close();
  });

  it("refuses to read an undecodable row instead of guessing", async () => {
    const path = await seededLedger();
    tamper(path, "UPDATE events SET data = 'not json' WHERE stream_id = 'b' AND stream_version = 1");
    const store = getSqliteEventStore({ path });
    await expect(store.readStream("b")).rejects.toBeInstanceOf(LedgerCorruptError);
    await expect(store.readStream("b")).rejects.toThrow(/global position 4 \(stream "b" version 1\)/);
    expect(await store.readStream("a")).toHaveLength(5);
    await store.close();
  });
});
