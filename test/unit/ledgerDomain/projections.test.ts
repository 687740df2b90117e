import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  RecoveryPointsProjection,
  StatusProjection,
  executeCommand,
  failCycle,
  getInMemoryEventStore,
  markResyncRequired,
  refuseStaleGeneration,
  startResync,
  commitCycle,
  type EventStore,
  type Subscription,
} from "../../../src/ledger/index.js";
import { waitFor } from "../ledger/eventStoreContract.js";
import { applyRetention, baseImage, cutoff, cycleInput, failedOverUnplanned, image, incremental, protect, testStarted, testStopped } from "./fixtures.js";

let store: EventStore;
let sub: Subscription | undefined;
beforeEach(() => {
  store = getInMemoryEventStore();
});
afterEach(async () => {
  await sub?.close();
  sub = undefined;
  await store.close();
});

/** Two VMs through most of what can happen to a relationship, plus noise in another stream. */
async function scenario(s: EventStore, step?: () => Promise<void>): Promise<void> {
  await protect(s, "web1", { lastSeq: 5, maxPoints: 3 });
  await step?.();
  await s.append("site-site-b", [{ type: "SiteRegistered", data: { siteId: "site-b" } }], "any");
  await protect(s, "db1", { lastSeq: 2, maxPoints: 2 });
  await executeCommand(s, "db1", (x) => failCycle(x, { cycleSeq: 3, generation: 1, reason: "NBD_READ_FAILED", message: "EIO" }));
  await executeCommand(s, "db1", (x) => markResyncRequired(x, { reason: "BITMAP_INCONSISTENT" }));
  await step?.();
  await executeCommand(s, "db1", (x) => startResync(x, { cycleSeq: 4, cutoffAt: cutoff(4), generation: 1 }));
  await executeCommand(s, "db1", (x) => commitCycle(x, cycleInput("db1", 4, "resync")));
  await applyRetention(s, "db1");
  await executeCommand(s, "web1", testStarted("t1", "rp-4"));
  await executeCommand(s, "web1", incremental(6));
  await step?.();
  await executeCommand(s, "web1", failedOverUnplanned("rp-6"));
  await executeCommand(s, "web1", (x) => refuseStaleGeneration(x, { presentedGeneration: 1, peerIdentity: "agent.site-a.example" }));
}

const NOW = new Date(Date.parse(cutoff(6)) + 90_000);

describe("recovery-point catalogue", () => {
  it("lists each point with its chain per disk, base first", async () => {
    await protect(store, "web1", { lastSeq: 5, maxPoints: 3 });
    const catalogue = await RecoveryPointsProjection.rebuild(store, "web1");
    expect(catalogue.list().map((p) => p.pointId)).toEqual(["rp-3", "rp-4", "rp-5"]);
    expect(catalogue.get("rp-3")!.disks[0]!.chain).toEqual([baseImage("web1", "disk0")]);
    expect(catalogue.latest()!.disks.map((d) => d.chain)).toEqual(["disk0", "disk1"].map((d) => [baseImage("web1", d), image("web1", d, 4), image("web1", d, 5)]));
    expect(catalogue.latest()).toMatchObject({ cycleSeq: 5, cutoffAt: cutoff(5), consistency: "crash", merging: false, testIds: [] });
  });

  it("rebuilding from scratch equals the projection maintained event by event", async () => {
    const live = new RecoveryPointsProjection("web1");
    sub = store.subscribe({ streamPrefix: "replication-" }, (e) => live.apply(e));
    let checks = 0;
    await scenario(store, async () => {
      const version = await store.streamVersion("replication-web1");
      await waitFor(() => live.version === version, "live catalogue to catch up");
      expect(live.list()).toEqual((await RecoveryPointsProjection.rebuild(store, "web1")).list());
      checks++;
    });
    const version = await store.streamVersion("replication-web1");
    await waitFor(() => live.version === version, "live catalogue to catch up");
    expect(live.list()).toEqual((await RecoveryPointsProjection.rebuild(store, "web1")).list());
    expect(live.get("rp-4")!.testIds).toEqual(["t1"]);
    expect(checks).toBe(3);

    // Feeding an event again changes nothing.
    const before = live.list();
    for (const e of await store.readStream("replication-web1")) live.apply(e);
    expect(live.list()).toEqual(before);
  });
});

describe("status", () => {
  it("rebuilding from scratch equals the projection maintained event by event", async () => {
    const live = new StatusProjection();
    sub = store.subscribe({}, (e) => live.apply(e));
    const halfway: StatusProjection[] = [];
    await scenario(store, async () => {
      halfway.push(await StatusProjection.rebuild(store));
    });
    const [last] = await store.readAll({ fromPosition: 0n }).then((all) => all.slice(-1));
    await waitFor(() => live.checkpoint === last!.globalPosition, "live status to catch up");
    const rebuilt = await StatusProjection.rebuild(store);
    expect(live.list(NOW)).toEqual(rebuilt.list(NOW));

    // A projection caught up in stages equals one built in one go.
    const staged = halfway[0]!;
    await staged.catchUp(store);
    expect(staged.list(NOW)).toEqual(rebuilt.list(NOW));
    expect(staged.checkpoint).toBe(rebuilt.checkpoint);
  });

  it("reports state, generation, last point, lag, totals and the last error per VM", async () => {
    await scenario(store);
    const status = await StatusProjection.rebuild(store);
    expect(status.list(NOW).map((v) => v.vmId)).toEqual(["db1", "web1"]);
    expect(status.get("web1", NOW)).toMatchObject({
      state: "failed-over-waiting-completion",
      generation: 2,
      primarySiteId: "site-a",
      replicaSiteId: "site-b",
      lastPointId: "rp-6",
      lastCutoffAt: cutoff(6),
      lagSeconds: 90,
      recoveryPoints: 4,
      activeTestFailovers: 1,
      cyclesCommitted: 6,
      cyclesFailed: 0,
      dataBytes: 21_000_000,
      wireBytes: 8_400_000,
      staleGenerationRefusals: 1,
      lastError: { reason: "STALE_GENERATION", message: expect.stringContaining("presenting generation 1 (current 2)") },
    });
    expect(status.get("db1", NOW)).toMatchObject({
      state: "replicating",
      generation: 1,
      lastPointId: "rp-4",
      lagSeconds: 150, // rp-4 was cut two 30 s intervals before rp-6
      recoveryPoints: 2,
      cyclesCommitted: 3,
      cyclesFailed: 1,
      consecutiveFailures: 0,
      dataBytes: 7_000_000,
      lastError: { reason: "RESYNC_REQUIRED", message: "BITMAP_INCONSISTENT" },
    });
    expect(status.get("nope", NOW)).toBeUndefined();
    // A clock behind the cut-off shows no lag rather than a negative one.
    expect(status.get("db1", new Date(cutoff(1)))!.lagSeconds).toBe(0);
  });

  it("a point merged or stopped test shows in the next rebuild", async () => {
    await protect(store, "web1", { lastSeq: 3, maxPoints: 2, retention: false });
    await executeCommand(store, "web1", testStarted("t1", "rp-1"));
    const status = await StatusProjection.rebuild(store);
    expect(status.get("web1", NOW)).toMatchObject({ recoveryPoints: 3, activeTestFailovers: 1 });
    await executeCommand(store, "web1", testStopped("t1"));
    await applyRetention(store, "web1");
    await status.catchUp(store);
    expect(status.get("web1", NOW)).toMatchObject({ recoveryPoints: 2, activeTestFailovers: 0 });
  });
});
