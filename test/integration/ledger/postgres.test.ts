/**
 * The EventStore contract and the shared-ledger properties on a real PostgreSQL 15 server started
 * by the test itself (test/helpers/postgres.ts). Each test gets its own ledger schema.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LedgerOpenError, WrongExpectedVersionError, verifyLedger, type EventStore, type NewEvent, type RecordedEvent } from "../../../src/ledger/index.js";
import { getPostgresEventStore, type PostgresEventStoreOptions } from "../../../src/ledger/postgres/postgresEventStore.js";
import { advisoryKey } from "../../../src/ledger/postgres/schema.js";
import { GENESIS_HASH, sealEvents } from "../../../src/ledger/hashChain.js";
import { postgresRequired, postgresUnavailableReason, startPostgres, type TestPostgres } from "../../helpers/postgres.js";
import { eventStoreContract, waitFor } from "../../unit/ledger/eventStoreContract.js";

const unavailable = postgresUnavailableReason();
const skip = unavailable !== undefined && !postgresRequired();
if (skip) console.warn(`PostgreSQL ledger tests NOT RUN: ${unavailable}`);

let server: TestPostgres | undefined;
let n = 0;
const ev = (type: string, data: Record<string, unknown> = {}): NewEvent => ({ type, data });
const url = () => {
  if (!server) throw new Error(unavailable ?? "PostgreSQL test server did not start");
  return server.url;
};
const open = (schema: string, extra: Partial<PostgresEventStoreOptions> = {}) => getPostgresEventStore({ url: url(), schema, ...extra });

describe.skipIf(skip)("PostgreSQL ledger", () => {
  beforeAll(async () => {
    // In CI a missing server fails here with the reason instead of skipping.
    if (unavailable) throw new Error(unavailable);
    server = await startPostgres();
  });
  afterAll(async () => {
    await server?.stop();
  });

  eventStoreContract("postgres", () => open(`contract_${++n}`));

  describe("shared by several store instances (as by several site processes)", () => {
    const stores: EventStore[] = [];
    const two = async (schema: string, extra: Partial<PostgresEventStoreOptions> = {}) => {
      const a = await open(schema, extra);
      const b = await open(schema, extra);
      stores.push(a, b);
      return [a, b] as const;
    };
    afterAll(async () => {
      await Promise.all(stores.map((s) => s.close()));
    });

    it("sees the other instance's appends, live through NOTIFY rather than polling", async () => {
      const [a, b] = await two(`shared_${++n}`, { pollIntervalMs: 600_000 });
      const seen: string[] = [];
      const sub = a.subscribe({}, (e) => void seen.push(`${e.stream}:${e.type}`));
      await sub.caughtUp;
      await b.append("relationship-vm1", [ev("Created")], "no_stream");
      await a.append("relationship-vm2", [ev("Created")], "no_stream");
      await waitFor(() => seen.length === 2, "both appends through the subscription", 10_000);
      expect(seen).toEqual(["relationship-vm1:Created", "relationship-vm2:Created"]);
      expect(await a.readStream("relationship-vm1")).toEqual(await b.readStream("relationship-vm1"));
      await sub.close();
    });

    it("gets its notifications back after the LISTEN connection is killed", async () => {
      const [a, b] = await two(`relisten_${++n}`, { pollIntervalMs: 600_000 });
      const seen: string[] = [];
      const sub = a.subscribe({}, (e) => void seen.push(e.type));
      await sub.caughtUp;
      const admin = new pg.Client({ connectionString: url() });
      await admin.connect();
      const listeners = async () =>
        (await admin.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN qreplica_ledger_relisten%'")).rows.map((r) => r.pid);
      const before = await listeners();
      expect(before).toHaveLength(2); // one per store instance
      await admin.query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", [before]);
      let now: number[] = [];
      const deadline = Date.now() + 15_000;
      while (!(now.length === 2 && now.every((p) => !before.includes(p)))) {
        if (Date.now() > deadline) throw new Error(`LISTEN connections not re-opened: ${now.join(",")}`);
        await new Promise((r) => setTimeout(r, 50));
        now = await listeners();
      }
      await admin.end();
      await b.append("s", [ev("AfterReconnect")], "no_stream");
      await waitFor(() => seen.length === 1, "the append through the new LISTEN connection", 10_000);
      expect(seen).toEqual(["AfterReconnect"]);
      await sub.close();
    });

    it("settles concurrent commands on one stream from two instances by optimistic concurrency", async () => {
      const [a, b] = await two(`occ_${++n}`);
      await a.append("relationship-vm1", [ev("Created")], "no_stream");
      const version = await b.streamVersion("relationship-vm1");
      const results = await Promise.allSettled([a.append("relationship-vm1", [ev("FailoverStarted")], version!), b.append("relationship-vm1", [ev("Paused")], version!)]);
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      const lost = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
      expect(lost.reason).toBeInstanceOf(WrongExpectedVersionError);
      expect((lost.reason as WrongExpectedVersionError).actual).toBe(1n);
      expect((await a.readStream("relationship-vm1")).map((e) => e.version)).toEqual([0n, 1n]);
      expect((await verifyLedger(b)).ok).toBe(true);
    });

    it("gives a subscriber every event exactly once while two instances append concurrently", async () => {
      const schema = `race_${++n}`;
      const [a, b] = await two(schema);
      const reader = await open(schema, { pollIntervalMs: 20 });
      stores.push(reader);
      const seen: RecordedEvent[] = [];
      const sub = reader.subscribe({}, (e) => void seen.push(e));
      await sub.caughtUp;
      const writer = async (s: EventStore, name: string) => {
        for (let i = 0; i < 60; i++) await s.append(`${name}-${i % 3}`, [ev(`${name}${i}`), ev(`${name}${i}b`)], "any");
      };
      await Promise.all([writer(a, "a"), writer(b, "b"), writer(a, "c"), writer(b, "d")]);
      await waitFor(() => seen.length === 480, "480 events at the subscriber", 30_000);
      const all = await reader.readAll();
      expect(seen.map((e) => e.globalPosition)).toEqual(all.map((e) => e.globalPosition));
      for (let i = 1; i < seen.length; i++) expect(seen[i]!.globalPosition > seen[i - 1]!.globalPosition).toBe(true);
      expect(await verifyLedger(reader)).toMatchObject({ ok: true, streams: 12, events: 480 });
      await sub.close();
    });

    it("never lets a reader see a later position before an earlier one commits", async () => {
      const schema = `order_${++n}`;
      const [a, b] = await two(schema, { pollIntervalMs: 10 });
      const seen: bigint[] = [];
      const sub = b.subscribe({}, (e) => void seen.push(e.globalPosition));
      await sub.caughtUp;
      // A slow writer: holds the append lock as the adapter does and inserts, but does not commit yet.
      const slow = new pg.Client({ connectionString: url() });
      await slow.connect();
      try {
        await slow.query("BEGIN");
        await slow.query("SELECT pg_advisory_xact_lock($1)", [advisoryKey(schema, "append")]);
        const [e] = sealEvents("slow", [ev("Slow")], { version: undefined, hash: GENESIS_HASH }, new Date());
        await slow.query(
          `INSERT INTO ${schema}.events (stream_id, stream_version, type, data, metadata, recorded_at, hash, previous_hash) VALUES ('slow', 0, $1, $2, $3, $4, $5, $6)`,
          [e!.type, e!.dataJson, e!.metadataJson, e!.recordedAt, e!.hash, e!.previousHash],
        );
        let waiting = 0;
        const poll = setInterval(() => {
          void slow.query<{ n: string }>("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").then(
            (r) => (waiting = Number(r.rows[0]!.n)),
            () => undefined,
          );
        }, 20);
        let fastDone = false;
        const fast = a.append("fast", [ev("Fast")], "no_stream").then((r) => {
          fastDone = true;
          return r;
        });
        // The fast append queues behind the lock (seen in pg_locks), so nothing can be visible at a later position.
        await waitFor(() => waiting > 0, "the fast append to wait for the append lock", 10_000);
        expect(fastDone).toBe(false);
        expect(await b.readAll()).toEqual([]);
        clearInterval(poll);
        await slow.query("COMMIT");
        const r = await fast;
        await waitFor(() => seen.length === 2, "both events at the subscriber", 10_000);
        expect(seen).toEqual((await b.readAll()).map((x) => x.globalPosition));
        expect(seen[1]).toBe(r.lastGlobalPosition);
        expect((await b.readAll()).map((x) => x.stream)).toEqual(["slow", "fast"]);
      } finally {
        await slow.end();
        await sub.close();
      }
    });

    it("loses nothing and shows no gap when a writer's session dies mid-append", async () => {
      const schema = `crash_${++n}`;
      const [a, b] = await two(schema);
      await a.append("s", [ev("Before")], "no_stream");
      const doomed = new pg.Client({ connectionString: url() });
      doomed.on("error", () => undefined);
      await doomed.connect();
      await doomed.query("BEGIN");
      await doomed.query("SELECT pg_advisory_xact_lock($1)", [advisoryKey(schema, "append")]);
      await doomed.query(
        `INSERT INTO ${schema}.events (stream_id, stream_version, type, data, metadata, recorded_at, hash, previous_hash) VALUES ('s', 1, 'Doomed', '{}', '{}', 'x', 'x', 'x')`,
      );
      const pid = (await doomed.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;
      const waiting = b.append("s", [ev("After")], 0n);
      const admin = new pg.Client({ connectionString: url() });
      await admin.connect();
      await admin.query("SELECT pg_terminate_backend($1)", [pid]);
      await admin.end();
      await doomed.end().catch(() => undefined);
      expect((await waiting).nextExpectedVersion).toBe(1n);
      expect((await a.readStream("s")).map((e) => e.type)).toEqual(["Before", "After"]);
      expect(await verifyLedger(a)).toMatchObject({ ok: true, events: 2 });
    });
  });

  describe("integrity and opening", () => {
    it("refuses in-place edits, and verify names a row edited with the trigger disabled", async () => {
      const schema = `tamper_${++n}`;
      const store = await open(schema);
      await store.append("a", [ev("A0", { n: 0 }), ev("A1", { n: 1 }), ev("A2", { n: 2 })], "no_stream");
      await store.append("b", [ev("B0")], "no_stream");
      const raw = new pg.Client({ connectionString: url() });
      await raw.connect();
      try {
        await expect(raw.query(`UPDATE ${schema}.events SET type = 'X' WHERE stream_id = 'a'`)).rejects.toThrow(/append-only/);
        await expect(raw.query(`DELETE FROM ${schema}.events`)).rejects.toThrow(/append-only/);
        await raw.query(`ALTER TABLE ${schema}.events DISABLE TRIGGER events_no_change`);
        await raw.query(`UPDATE ${schema}.events SET data = '{"n":99}' WHERE stream_id = 'a' AND stream_version = 1`);
        await raw.query(`UPDATE ${schema}.events SET data = 'not json' WHERE stream_id = 'b'`);
      } finally {
        await raw.end();
      }
      const report = await verifyLedger(store);
      expect(report.ok).toBe(false);
      expect(report.problems).toEqual([
        { stream: "a", version: 1n, globalPosition: 2n, reason: expect.stringMatching(/modified/) },
        { stream: "b", version: 0n, globalPosition: 4n, reason: "data is not valid JSON" },
      ]);
      await store.close();
    });

    it("refuses a schema that holds something else, and a bad schema name", async () => {
      const raw = new pg.Client({ connectionString: url() });
      await raw.connect();
      await raw.query("CREATE SCHEMA billing; CREATE TABLE billing.customers (id int)");
      await raw.end();
      await expect(open("billing")).rejects.toThrow(/schema "billing" holds tables but is not a qreplica ledger/);
      await expect(open("Robert'); DROP TABLE x;--")).rejects.toBeInstanceOf(LedgerOpenError);
    });

    it("names an unreachable server without its password", async () => {
      const err = await getPostgresEventStore({ url: "postgres://u:secret@127.0.0.1:1/db" }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LedgerOpenError);
      expect(String((err as Error).message)).toContain("127.0.0.1:1");
      expect(String((err as Error).message)).not.toContain("secret");
    });

    it("keeps events across reopen and opens the same schema concurrently without racing the migration", async () => {
      const schema = `reopen_${++n}`;
      const stores = await Promise.all([open(schema), open(schema), open(schema)]);
      await stores[0]!.append("s", [ev("A")], "no_stream");
      await Promise.all(stores.map((s) => s.close()));
      const again = await open(schema);
      expect((await again.readStream("s")).map((e) => e.type)).toEqual(["A"]);
      await again.close();
    });
  });
});
