import { describe, expect, it } from "vitest";
import {
  getInMemoryEventStore,
  InvalidCommandInputError,
  MergeBlockedByTestFailoverError,
  RecoveryPointsProjection,
  completeMerge,
  executeCommand,
  startMerge,
} from "../../../src/ledger/index.js";
import { nextMerge } from "../../../src/site/retention.js";
import { DISK_IDS, caught, enabled, fold, image, incremental, initialCommitted, initialStarted, protect, run, testStarted, testStopped } from "./fixtures.js";

const VM = "web1";
const upTo = (n: number) => [enabled, initialStarted, initialCommitted, ...Array.from({ length: n - 1 }, (_, i) => incremental(i + 2))];

describe("retention tiers in the ledger: a point that is not the oldest merges into the next one", () => {
  it("startMerge of a middle point marks it merging; completeMerge drops it and leaves the next one's images", () => {
    let s = fold(VM, ...upTo(5));
    expect(startMerge(s, { pointId: "rp-3" })).toMatchObject([{ type: "RecoveryPointMergeStarted", data: { pointId: "rp-3", intoPointId: "rp-4" } }]);
    s = run(s, (x) => startMerge(x, { pointId: "rp-3" }));
    expect(s.points.find((p) => p.pointId === "rp-3")?.merging).toBe(true);
    s = run(s, (x) => completeMerge(x, { pointId: "rp-3", disks: DISK_IDS.map((diskId) => ({ diskId, imagePath: image(VM, diskId, 4) })) }));
    expect(s.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-2", "rp-4", "rp-5"]);
    expect(s.points.find((p) => p.pointId === "rp-4")?.disks.map((d) => d.imagePath)).toEqual(DISK_IDS.map((d) => image(VM, d, 4)));
    expect(s.counters.mergesCompleted).toBe(1);
  });

  it("never merges the newest point away; an unknown point is named", () => {
    const s = fold(VM, ...upTo(3));
    expect(() => startMerge(s, { pointId: "rp-3" })).toThrow(InvalidCommandInputError);
    expect(() => startMerge(s, { pointId: "rp-9" })).toThrow(/no recovery point rp-9/);
  });

  it("a test failover on the point or a later one blocks its merge; one on an earlier point does not", () => {
    const s = fold(VM, ...upTo(5), testStarted("t1", "rp-2"));
    expect(startMerge(s, { pointId: "rp-3" })).toHaveLength(1);
    expect(() => startMerge(s, { pointId: "rp-2" })).toThrow(MergeBlockedByTestFailoverError);
    expect(() => startMerge(s, { pointId: "rp-1" })).toThrow(MergeBlockedByTestFailoverError);
    const later = run(s, testStarted("t2", "rp-4"));
    expect(() => startMerge(later, { pointId: "rp-3" })).toThrow(MergeBlockedByTestFailoverError);
    // The site's choice agrees: with tiers that keep only the newest, rp-1..rp-4 would go, but
    // the test on rp-4 holds it and every merge at or below it waits.
    const plan = nextMerge(later, { tiers: [], minPoints: 1 }, Date.parse("2030-01-01T00:00:00Z"));
    expect(plan.plan.keep).toEqual(["rp-2", "rp-4", "rp-5"]);
    expect(plan.pointId).toBeUndefined();
    expect(plan.waiting).toEqual(["rp-1", "rp-3"]);
    const stopped = run(run(later, testStopped("t2")), testStopped("t1"));
    expect(nextMerge(stopped, { tiers: [], minPoints: 1 }, Date.parse("2030-01-01T00:00:00Z")).pointId).toBe("rp-1");
  });

  it("the points read model drops a thinned point, live and rebuilt alike", async () => {
    const store = getInMemoryEventStore();
    await protect(store, VM, { lastSeq: 4, retention: false, maxPoints: 10 });
    const live = await RecoveryPointsProjection.rebuild(store, VM);
    await executeCommand(store, VM, (s) => startMerge(s, { pointId: "rp-2" }));
    await live.catchUp(store);
    expect(await caught(() => executeCommand(store, VM, (s) => startMerge(s, { pointId: "rp-3" })))).toMatchObject({ code: "MERGE_IN_PROGRESS" });
    await executeCommand(store, VM, (s) => completeMerge(s, { pointId: "rp-2", disks: DISK_IDS.map((diskId) => ({ diskId, imagePath: image(VM, diskId, 3) })) }));
    await live.catchUp(store);
    const rebuilt = await RecoveryPointsProjection.rebuild(store, VM);
    expect(live.list().map((p) => p.pointId)).toEqual(["rp-1", "rp-3", "rp-4"]);
    expect(rebuilt.list()).toEqual(live.list());
  });
});
