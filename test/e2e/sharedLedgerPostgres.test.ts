/**
 * Site processes on one PostgreSQL ledger (real `site serve` processes, a real agent, a real
 * PostgreSQL 15 started by the test): the SQLite ledger is migrated in, two site processes share
 * the store and see each other's events, a kill -9 of the replica site inside an append loses
 * nothing and no live reader ever sees a gap, and `ledger verify` passes on the shared store.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadRelationship, relationshipStream, type RecordedEvent } from "../../src/ledger/index.js";
import { getPostgresEventStore, type PostgresEventStore } from "../../src/ledger/postgres/postgresEventStore.js";
import { siteFile } from "../../src/site/siteConfig.js";
import { postgresRequired, postgresUnavailableReason, startPostgres, type TestPostgres } from "../helpers/postgres.js";
import { cliJson, waitFor, waitForLogLine } from "../helpers/processes.js";
import { twoSitesPerTest } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const unavailable = postgresUnavailableReason();
const skip = unavailable !== undefined && !postgresRequired();
if (skip) console.warn(`shared PostgreSQL ledger e2e NOT RUN: ${unavailable}`);
const newTwoSites = twoSitesPerTest();

function useLedger(siteDir: string, ledger: unknown): void {
  const config = JSON.parse(readFileSync(siteFile(siteDir), "utf8")) as Record<string, unknown>;
  writeFileSync(siteFile(siteDir), JSON.stringify({ ...config, ledger }, null, 2), { mode: 0o600 });
}

describe.skipIf(skip)("sites on a shared PostgreSQL ledger (real processes)", { timeout: 300_000 }, () => {
  let server: TestPostgres | undefined;
  let observer: PostgresEventStore | undefined;
  beforeAll(async () => {
    if (unavailable) throw new Error(unavailable);
    server = await startPostgres();
  });
  afterAll(async () => {
    await observer?.close();
    await server?.stop();
  });

  it("migrate, share, see each other's events, survive kill -9 mid-append, verify", async () => {
    const t = await newTwoSites("qr-pgsites-", { diskBytes: 8 * MiB, intervalSeconds: 1 });
    const url = server!.url;
    const migrated = await cliJson<{ events: number; sourceVerified: boolean; destinationVerified: boolean }>([
      "ledger",
      "migrate",
      "--dir",
      t.siteB,
      "--to",
      url,
      "--schema",
      "dr",
    ]);
    expect(migrated).toMatchObject({ sourceVerified: true, destinationVerified: true });
    expect(migrated.events).toBeGreaterThanOrEqual(1); // agent-a's authorization, made offline by the fixture
    for (const dir of [t.siteA, t.siteB]) useLedger(dir, { kind: "postgres", url, schema: "dr" });

    // A reader outside the sites, live from the first event: it must see every event once, in order.
    observer = await getPostgresEventStore({ url, schema: "dr", pollIntervalMs: 50 });
    const seen: RecordedEvent[] = [];
    const sub = observer.subscribe({}, (e) => void seen.push(e));

    await t.startSite(t.siteA);
    // Site B dies by SIGKILL inside the append transaction of its first CycleCommitted (rows
    // inserted, not committed): the test-only fault point, a kill -9 at the worst moment.
    let siteB = await t.startSite(t.siteB, { env: { QREPLICA_FAULT: "crash-mid-ledger-append" } });
    await waitForLogLine(join(t.siteB, "site.log"), "ledger in a shared store");

    // An authorization made through site A's process is in force at site B's process.
    await cliJson(["authorize", "--dir", t.siteA, "--primary", "agent-z"]);
    const list = await cliJson<Array<{ primaryIdentity: string; addedBy: string }> | { entries: Array<{ primaryIdentity: string; addedBy: string }> }>([
      "authorizations",
      "--dir",
      t.siteB,
    ]);
    const identities = (Array.isArray(list) ? list : list.entries).map((e) => e.primaryIdentity);
    expect(identities).toEqual(expect.arrayContaining(["agent-a", "agent-z"]));

    t.startAgent();
    const committed = async () => (await observer!.readStream(relationshipStream("vm1"))).filter((e) => e.type === "CycleCommitted").length;
    expect(await siteB.exited).toBeNull(); // killed by a signal, not exited
    expect(readFileSync(join(t.siteB, "site.log"), "utf8")).toContain("crash-mid-ledger-append: SIGKILL");
    // The half-done append left nothing behind, and its lock went with the dead session.
    const atKill = await committed();
    expect(atKill).toBe(0);
    expect((await observer.readAll()).filter((e) => e.type === "CycleCommitted")).toEqual([]);
    siteB = await t.startSite(t.siteB);
    await waitFor("two more points after the restart", async () => ((await committed()) >= atKill + 2 ? true : undefined), 120_000);

    const state = (await loadRelationship(observer, "vm1")).state;
    expect(state.points.length).toBeGreaterThanOrEqual(2);
    // Nothing committed before the kill went missing: the first atKill commits are still there, in order.
    const commits = (await observer.readStream(relationshipStream("vm1"))).filter((e) => e.type === "CycleCommitted");
    expect(commits.length).toBeGreaterThanOrEqual(atKill + 2);
    const verify = await cliJson<{ ok: boolean; events: number; problems: unknown[] }>(["ledger", "verify", "--dir", t.siteB]);
    expect(verify).toMatchObject({ ok: true, problems: [] });

    const all = await observer.readAll();
    await waitFor("the observer to reach the end", () => (seen.length >= all.length ? true : undefined), 30_000);
    expect(seen.slice(0, all.length).map((e) => e.globalPosition)).toEqual(all.map((e) => e.globalPosition));
    expect(verify.events).toBeGreaterThan(0);
    // A command on the relationship through site A's process is what site B's process then reports
    // and acts on: both decide from the same stream, settled by its version.
    const paused = await cliJson<{ state: string }>(["pause", "vm1", "--dir", t.siteA, "--reason", "paused through site A"]);
    expect(paused.state).toBe("paused");
    // (B's process did not make the pause, so it does not push it to the agent connected to it: the
    // agent's cycles are refused, "is in state paused", until the resume.)
    type Reason = { code: string; message: string };
    let reasons: Reason[] = [];
    await waitFor(
      "site B to report the pause made through A",
      async () => {
        const st = await cliJson<{ relationships: Array<{ healthReasons: Reason[] }> }>(["status", "vm1", "--dir", t.siteB]);
        reasons = st.relationships[0]?.healthReasons ?? [];
        return reasons.some((r) => r.code === "STATE_PAUSED") ? true : undefined;
      },
      30_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}; B last reported ${JSON.stringify(reasons)}`);
    });
    expect(reasons.find((r) => r.code === "STATE_PAUSED")?.message).toBe("replication is paused: paused through site A");
    const resumed = await cliJson<{ state: string }>(["resume", "vm1", "--dir", t.siteB]);
    expect(resumed.state).toBe("replicating");
    await sub.close();
  });
});
