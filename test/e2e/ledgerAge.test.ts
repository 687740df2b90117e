import { readFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import {
  RELATIONSHIP_FOLD_VERSION,
  RecoveryPointsProjection,
  StatusProjection,
  decodeRelationshipEvent,
  foldRelationship,
  getSqliteEventStore,
  relationshipStream,
  snapshotKeyOf,
  type RelationshipState,
} from "../../src/ledger/index.js";
import { appendHistory, relationshipHistory } from "../helpers/ledgerHistory.js";
import { cliJson, runCli, type Daemon } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const AGED = "aged";
const YOUNG = "young";
const AGED_EVENTS = 30_000;
const newTwoSites = twoSitesPerTest();

interface StatusJson {
  relationships: Array<{ vmId: string; state: string; generation: number; lastRecoveryPoint?: { recoveryPointId: string } }>;
}
interface PointJson {
  recoveryPointId: string;
  sequence: number;
  changedBytes: number;
  transferredBytes: number;
}

/** What the site must answer, computed by folding the ledger file from its first event. */
async function expected(ledger: string): Promise<{ states: Map<string, RelationshipState>; points: Map<string, string[]>; relationshipEvents: number }> {
  const store = getSqliteEventStore({ path: ledger, create: false });
  try {
    const states = new Map<string, RelationshipState>();
    const points = new Map<string, string[]>();
    let relationshipEvents = 0;
    for (const vm of [AGED, YOUNG]) {
      const events = await store.readStream(relationshipStream(vm));
      relationshipEvents += events.length;
      states.set(vm, foldRelationship(vm, events.map(decodeRelationshipEvent)));
      points.set(
        vm,
        (await RecoveryPointsProjection.rebuild(store, vm))
          .list()
          .filter((p) => !p.merging)
          .map((p) => p.pointId),
      );
    }
    expect((await StatusProjection.rebuild(store)).list(new Date()).map((s) => [s.vmId, s.state])).toEqual([...states].map(([vm, s]) => [vm, s.state]));
    return { states, points, relationshipEvents };
  } finally {
    await store.close();
  }
}

/** The site's answers (status and points through the control plane) against a full fold. */
async function expectSiteEqualsFullFold(t: TwoSites, ledger: string): Promise<void> {
  const want = await expected(ledger);
  const status = await cliJson<StatusJson>(["status", "--dir", t.siteB, "--json"]);
  expect(status.relationships.map((r) => [r.vmId, r.state, r.generation, r.lastRecoveryPoint?.recoveryPointId])).toEqual(
    [...want.states].map(([vm, s]) => [vm, s.state, s.generation, want.points.get(vm)!.at(-1)]),
  );
  for (const vm of [AGED, YOUNG]) {
    const points = await cliJson<PointJson[]>(["points", vm, "--dir", t.siteB, "--json"]);
    expect(points.map((p) => p.recoveryPointId)).toEqual(want.points.get(vm));
    // The cycle facts come from the read model, not from re-reading the stream.
    for (const p of points) expect(p.changedBytes).toBe(p.sequence * 1_000_000);
  }
}

function corruptSnapshots(ledger: string): void {
  const db = new Database(ledger);
  try {
    // Damaged: contents changed under their checksum. Old fold: the fold version of a past release.
    const damaged = db.prepare("UPDATE snapshots SET state = replace(state, '\"replicating\"', '\"paused\"') WHERE key IN (?, 'read-models')").run(snapshotKeyOf(AGED));
    expect(damaged.changes).toBe(2);
    db.prepare("UPDATE snapshots SET fold_version = 0 WHERE key = ?").run(snapshotKeyOf(YOUNG));
  } finally {
    db.close();
  }
}

describe("a site on an aged ledger (real site process, real SQLite file)", { timeout: 300_000 }, () => {
  it("restarts from snapshots, ignores damaged or old ones, and answers as a full fold would; `ledger rebuild` agrees", async () => {
    const t = await newTwoSites("qr-ledgerage-", { diskBytes: 8 * MiB });
    const ledger = join(t.siteB, "ledger.sqlite");
    const seed = getSqliteEventStore({ path: ledger });
    await appendHistory(seed, AGED, relationshipHistory(AGED, AGED_EVENTS).events);
    await appendHistory(seed, YOUNG, relationshipHistory(YOUNG, 1500).events);
    await seed.close();

    // First start: no snapshot yet; the site folds once and stores them.
    let site: Daemon = await t.startSite(t.siteB);
    await expectSiteEqualsFullFold(t, ledger);
    await cliJson(["pause", AGED, "--dir", t.siteB, "--reason", "maintenance", "--json"]);
    await expectSiteEqualsFullFold(t, ledger);
    await site.kill("SIGTERM");
    const db = new Database(ledger, { readonly: true });
    const keys = (db.prepare("SELECT key FROM snapshots ORDER BY key").all() as Array<{ key: string }>).map((r) => r.key);
    db.close();
    expect(keys).toEqual(["read-models", snapshotKeyOf(AGED), snapshotKeyOf(YOUNG)]);

    // Restart on damaged and outdated snapshots: ignored (logged), folded from the events, still right.
    corruptSnapshots(ledger);
    site = await t.startSite(t.siteB);
    await expectSiteEqualsFullFold(t, ledger);
    await cliJson(["resume", AGED, "--dir", t.siteB, "--json"]);
    await cliJson(["pause", YOUNG, "--dir", t.siteB, "--reason", "maintenance", "--json"]);
    await expectSiteEqualsFullFold(t, ledger);
    const log = readFileSync(join(t.siteB, "site.log"), "utf8");
    expect(log).toMatch(/"vm":"aged","reason":"snapshot checksum does not match its contents \(damaged\)".*relationship snapshot ignored/);
    expect(log).toMatch(new RegExp(`"vm":"young","reason":"snapshot fold version 0, this code folds version ${RELATIONSHIP_FOLD_VERSION}".*relationship snapshot ignored`));
    expect(log).toMatch(/"reason":"snapshot checksum does not match its contents \(damaged\)".*read-model snapshot ignored/);

    // `qreplica ledger rebuild` on the site directory, with the site running, then a restart on its result.
    const rebuilt = await runCli(["ledger", "rebuild", "--dir", t.siteB, "--json"]);
    expect(rebuilt.code, rebuilt.stderr).toBe(0);
    const report = JSON.parse(rebuilt.stdout) as { events: number; vms: number };
    expect(report).toMatchObject({ events: (await expected(ledger)).relationshipEvents, vms: 2 });
    expect(rebuilt.stderr).toMatch(/"progress":\{"events":\d+/);
    await site.kill("SIGTERM");
    // At its stop the running site took the rebuilt models over instead of writing its own over them.
    expect(readFileSync(join(t.siteB, "site.log"), "utf8")).toContain("read models rebuilt by 'qreplica ledger rebuild' adopted");
    site = await t.startSite(t.siteB);
    await expectSiteEqualsFullFold(t, ledger);
    await cliJson(["resume", YOUNG, "--dir", t.siteB, "--json"]);
    await expectSiteEqualsFullFold(t, ledger);
  });
});
