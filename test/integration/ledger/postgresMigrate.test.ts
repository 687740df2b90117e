/**
 * `qreplica ledger migrate` and `ledger verify --url` as an operator runs them (real CLI processes)
 * against a real PostgreSQL 15 started by the test.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getSqliteEventStore, type NewEvent, type RecordedEvent } from "../../../src/ledger/index.js";
import { getPostgresEventStore } from "../../../src/ledger/postgres/postgresEventStore.js";
import { runCli } from "../../helpers/processes.js";
import { postgresRequired, postgresUnavailableReason, startPostgres, type TestPostgres } from "../../helpers/postgres.js";

const unavailable = postgresUnavailableReason();
const skip = unavailable !== undefined && !postgresRequired();
if (skip) console.warn(`PostgreSQL ledger migrate tests NOT RUN: ${unavailable}`);

const ev = (type: string, data: Record<string, unknown> = {}): NewEvent => ({ type, data, metadata: { actor: "test" } });

describe.skipIf(skip)("qreplica ledger migrate into PostgreSQL", () => {
  let server: TestPostgres;
  const dir = mkdtempSync(join(tmpdir(), "qr-migrate-"));
  beforeAll(async () => {
    if (unavailable) throw new Error(unavailable);
    server = await startPostgres();
  });
  afterAll(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function sqliteLedger(name: string, streams: number, perStream: number): Promise<{ path: string; events: RecordedEvent[] }> {
    const path = join(dir, `${name}.sqlite`);
    const store = getSqliteEventStore({ path });
    for (let v = 0; v < perStream; v++) {
      for (let s = 0; s < streams; s++)
        await store.append(`relationship-vm${s}`, [ev(v === 0 ? "RelationshipCreated" : "CycleCommitted", { v, s, name: "ü✓" })], v === 0 ? "no_stream" : BigInt(v - 1));
    }
    const events = await store.readAll();
    await store.close();
    return { path, events };
  }

  it("copies every event with its version, time and hash; verify passes on the shared store; a second copy is refused", async () => {
    const { path, events } = await sqliteLedger("site-b", 7, 40);
    const r = await runCli(["ledger", "migrate", "--file", path, "--to", server.url, "--schema", "site_b", "--json"]);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const report = JSON.parse(r.stdout) as { events: number; streams: number; sourceVerified: boolean; destinationVerified: boolean; to: string };
    expect(report).toMatchObject({ events: 280, streams: 7, sourceVerified: true, destinationVerified: true });
    expect(report.to).toContain("schema site_b");

    const pgStore = await getPostgresEventStore({ url: server.url, schema: "site_b" });
    const copied = await pgStore.readAll();
    const strip = (e: RecordedEvent) => ({ ...e, globalPosition: 0n });
    expect(copied.map(strip)).toEqual(events.map(strip));
    // The copy continues like the original: the next append chains from the migrated head.
    await pgStore.append("relationship-vm0", [ev("CycleCommitted")], 39n);
    await pgStore.close();

    const verify = await runCli(["ledger", "verify", "--url", server.url, "--schema", "site_b", "--json"]);
    expect(verify.code, verify.stderr).toBe(0);
    expect(JSON.parse(verify.stdout)).toMatchObject({ ok: true, streams: 7, events: 281 });

    const again = await runCli(["ledger", "migrate", "--file", path, "--to", server.url, "--schema", "site_b", "--json"]);
    expect(again.code).toBe(1);
    expect(JSON.parse(again.stdout).error).toMatchObject({ code: "LEDGER_MIGRATE_TARGET_NOT_EMPTY" });
  });

  it("refuses a source whose hash chain is broken, and writes nothing", async () => {
    const { path } = await sqliteLedger("tampered", 2, 5);
    const db = new Database(path);
    db.exec("DROP TRIGGER events_no_update");
    db.exec(`UPDATE events SET data = '{"v":99}' WHERE stream_id = 'relationship-vm1' AND stream_version = 3`);
    db.close();
    const r = await runCli(["ledger", "migrate", "--file", path, "--to", server.url, "--schema", "tampered", "--json"]);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout).error.code).toBe("LEDGER_INTEGRITY");
    expect(JSON.parse(r.stdout).error.message).toContain('stream "relationship-vm1" at version 3');
    const store = await getPostgresEventStore({ url: server.url, schema: "tampered" });
    expect(await store.readAll()).toEqual([]);
    await store.close();
  });

  it("names a bad destination option and an unreachable server", async () => {
    const { path } = await sqliteLedger("opts", 1, 1);
    const bad = await runCli(["ledger", "migrate", "--file", path, "--to", server.url, "--schema", "Bad-Name", "--json"]);
    expect(bad.code).toBe(2); // invalid input
    expect(JSON.parse(bad.stdout).error).toMatchObject({ code: "INVALID_ARGUMENT", message: expect.stringMatching(/option '--schema'/) });
    const down = await runCli(["ledger", "migrate", "--file", path, "--to", "postgres://qr:pw@127.0.0.1:1/x", "--json"]);
    expect(down.code).toBe(1);
    const err = JSON.parse(down.stdout).error as { code: string; message: string };
    expect(err.code).toBe("LEDGER_OPEN_FAILED");
    expect(err.message).not.toContain(":pw@");
  });
});
