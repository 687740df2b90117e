/**
 * Suspect points (the encryption signal as the ledger records it) and locked points (a policy's
 * lock, recorded with each point): the commands that judge, clear, resolve `last-clean`, and
 * refuse to merge or drop a locked point.
 */
import { describe, expect, it } from "vitest";
import {
  clearSuspectPoints,
  commitCycle,
  completeFailover,
  executeCommand,
  getInMemoryEventStore,
  LAST_CLEAN_POINT,
  RecoveryPointsProjection,
  StatusProjection,
  lastCleanPoint,
  NoCleanPointError,
  NoSuspectPointError,
  RecoveryPointLockedError,
  startMerge,
  startTestFailover,
  type Decide,
} from "../../../src/ledger/index.js";
import { planPoints } from "../../../src/site/retention.js";
import { planRetention } from "../../../src/policy/retentionPlan.js";
import { cutoff, cycleInput, enabled, failedOverUnplanned, fold, initialStarted, run } from "./fixtures.js";

const VM = "web1";
const MiB = 1024 * 1024;

/** Cycle `seq` changing `mib` MiB on disk0 (and nothing on disk1), `share` of it incompressible. */
const cycle =
  (seq: number, mib: number, share: number, extra: { lockedUntil?: string } = {}): Decide =>
  (s) => {
    const data = mib * MiB;
    return commitCycle(
      s,
      cycleInput(s.vmId, seq, seq === 1 ? "full" : "incremental", {
        dataBytes: data,
        diskDataBytes: { disk0: data, disk1: 0 },
        diskCompression: {
          disk0: { incompressibleBytes: Math.round(data * share), wireBytes: Math.round(data * (share + (1 - share) * 0.3)) },
          disk1: { incompressibleBytes: 0, wireBytes: 0 },
        },
        ...extra,
      }),
    );
  };

/** A compressible disk with a baseline: full copy (cycle 1) and cycles 2..5 of logs. */
const clean = [enabled, initialStarted, cycle(1, 100, 0.05), cycle(2, 4, 0.02), cycle(3, 4, 0.03), cycle(4, 4, 0.02), cycle(5, 4, 0.02)];

describe("suspect points", () => {
  it("a point whose changed bytes stop compressing is suspect, with a ledger event naming the disk and its baseline", () => {
    const s = fold(VM, ...clean);
    const events = cycle(6, 16, 0.99)(s);
    expect(events.map((e) => e.type)).toEqual(["CycleCommitted", "RecoveryPointCreated", "RecoveryPointSuspected"]);
    expect(events[2]).toMatchObject({ data: { pointId: "rp-6", cycleSeq: 6, cutoffAt: cutoff(6), disks: [{ diskId: "disk0", share: 0.99 }] } });
    const after = run(s, cycle(6, 16, 0.99));
    expect(after.suspectPoints.map((p) => p.pointId)).toEqual(["rp-6"]);
    // The suspect sample did not move the baseline.
    expect(after.encryptionBaselines.disk0).toEqual(s.encryptionBaselines.disk0);
    expect(lastCleanPoint(after)?.pointId).toBe("rp-5");
  });

  it("log cycles, small random cycles, and cycles recorded without the signal are not suspect", () => {
    const s = fold(VM, ...clean, cycle(6, 8, 0.03), cycle(7, 0.5, 1), (x) => commitCycle(x, cycleInput(VM, 8)));
    expect(s.suspectPoints).toEqual([]);
    expect(lastCleanPoint(s)?.pointId).toBe("rp-8");
  });

  it("a disk random from the start is never suspect", () => {
    const s = fold(VM, enabled, initialStarted, cycle(1, 64, 0.99), cycle(2, 4, 1), cycle(3, 4, 1), cycle(4, 4, 1), cycle(5, 4, 1), cycle(6, 32, 1));
    expect(s.suspectPoints).toEqual([]);
  });

  it("`last-clean` opens the newest point before the first suspect one, for a failover and a test failover", () => {
    const s = fold(VM, ...clean, cycle(6, 16, 0.99), cycle(7, 2, 0.1), cycle(8, 16, 0.99));
    expect(s.suspectPoints.map((p) => p.pointId)).toEqual(["rp-6", "rp-8"]);
    expect(startTestFailover(s, { testId: "t1", pointId: LAST_CLEAN_POINT, startedAt: cutoff(9) })[0]).toMatchObject({ data: { pointId: "rp-5" } });
    const failed = run(s, failedOverUnplanned(LAST_CLEAN_POINT));
    expect(failed.failover?.pointId).toBe("rp-5");
  });

  it("`last-clean` is refused when no retained point is older than the first suspect one", () => {
    const s = fold(VM, enabled, initialStarted, cycle(1, 100, 0.05), cycle(2, 4, 0.02), cycle(3, 4, 0.02), cycle(4, 4, 0.02));
    // Only the full copy's point is older than rp-5; pretend retention merged it away by failing over to suspect-only points.
    const suspect = run(s, cycle(5, 16, 1));
    expect(suspect.suspectPoints.map((p) => p.pointId)).toEqual(["rp-5"]);
    const trimmed = { ...suspect, points: suspect.points.filter((p) => p.cycleSeq >= 5) };
    expect(() => failedOverUnplanned(LAST_CLEAN_POINT)(trimmed)).toThrow(NoCleanPointError);
  });

  it("clear-suspect clears all (or one) and names who cleared; nothing to clear is refused", () => {
    const s = fold(VM, ...clean, cycle(6, 16, 0.99), cycle(7, 16, 0.99));
    expect(() => clearSuspectPoints(fold(VM, ...clean), { clearedBy: "ops", clearedByRole: "operator" })).toThrow(NoSuspectPointError);
    expect(() => clearSuspectPoints(s, { pointId: "rp-5", clearedBy: "ops", clearedByRole: "operator" })).toThrow(/rp-5 is not suspect. Suspect points: rp-6, rp-7/);
    const one = run(s, (x) => clearSuspectPoints(x, { pointId: "rp-6", clearedBy: "ops", clearedByRole: "operator" }));
    expect(one.suspectPoints.map((p) => p.pointId)).toEqual(["rp-7"]);
    const all = clearSuspectPoints(s, { clearedBy: "ops", clearedByRole: "operator" });
    expect(all).toEqual([{ type: "SuspectPointsCleared", data: { pointIds: ["rp-6", "rp-7"], clearedBy: "ops", clearedByRole: "operator" } }]);
    expect(run(s, () => all).suspectPoints).toEqual([]);
  });

  it("retention keeps the last clean point beyond its tier until the suspicion is cleared", () => {
    const s = fold(VM, ...clean, cycle(6, 16, 0.99), cycle(7, 2, 0.02));
    const now = Date.parse(cutoff(7));
    const spec = { tiers: [], minPoints: 1 };
    expect(planRetention(planPoints(s, now), spec, now)).toMatchObject({ keep: ["rp-5", "rp-7"] });
    expect(planRetention(planPoints(s, now), spec, now).reasons.get("rp-5")).toEqual(["last-clean"]);
    const cleared = run(s, (x) => clearSuspectPoints(x, { clearedBy: "ops", clearedByRole: "operator" }));
    expect(planRetention(planPoints(cleared, now), spec, now).keep).toEqual(["rp-7"]);
  });
});

describe("locked points", () => {
  const until = (seq: number) => new Date(Date.parse(cutoff(seq)) + 3_600_000).toISOString();
  const locked = [enabled, initialStarted, cycle(1, 1, 0, { lockedUntil: until(1) }), cycle(2, 1, 0, { lockedUntil: until(2) }), cycle(3, 1, 0, { lockedUntil: until(3) })];

  it("are recorded with their lock", () => {
    const s = fold(VM, ...locked);
    expect(s.points.map((p) => p.lockedUntil)).toEqual([until(1), until(2), until(3)]);
  });

  it("cannot be merged away while locked, by retention's oldest-first merge or a named one; the refusal names the lock's end", () => {
    const s = fold(VM, ...locked, cycle(4, 1, 0), cycle(5, 1, 0));
    const during = cutoff(5);
    expect(() => startMerge(s, { now: during })).toThrow(RecoveryPointLockedError);
    expect(() => startMerge(s, { pointId: "rp-2", now: during })).toThrow(new RegExp(`rp-2 until ${until(2).replace(/\./g, "\\.")}`));
    // Unlocked points merge as before; locked ones once their lock ended.
    expect(startMerge(s, { pointId: "rp-4", now: during })[0]).toMatchObject({ type: "RecoveryPointMergeStarted", data: { pointId: "rp-4" } });
    expect(startMerge(s, { pointId: "rp-2", now: until(2) })[0]).toMatchObject({ type: "RecoveryPointMergeStarted", data: { pointId: "rp-2" } });
  });

  it("retention plans around them: a locked point is kept whatever the tiers say", () => {
    const s = fold(VM, ...locked, cycle(4, 1, 0), cycle(5, 1, 0));
    const plan = planRetention(planPoints(s, Date.parse(cutoff(5))), { tiers: [], minPoints: 1 }, Date.parse(cutoff(5)));
    expect(plan.keep).toEqual(["rp-1", "rp-2", "rp-3", "rp-5"]);
    expect(plan.drop).toEqual(["rp-4"]);
    const later = Date.parse(until(3)) + 1;
    expect(planRetention(planPoints(s, later), { tiers: [], minPoints: 1 }, later).keep).toEqual(["rp-5"]);
  });

  it("a failover cannot be completed while it would drop a locked point", () => {
    const s = fold(VM, ...locked, failedOverUnplanned("rp-3"));
    expect(() => completeFailover(s, { now: cutoff(4) })).toThrow(RecoveryPointLockedError);
    try {
      completeFailover(s, { now: cutoff(4) });
    } catch (err) {
      expect((err as RecoveryPointLockedError).code).toBe("RECOVERY_POINT_LOCKED");
      expect((err as Error).message).toContain(`completing the failover would remove locked recovery point(s) rp-1 until ${until(1)}, rp-2 until ${until(2)}`);
    }
    expect(completeFailover(s, { now: until(2) })[0]).toMatchObject({ type: "FailoverCompleted", data: { droppedPointIds: ["rp-1", "rp-2"] } });
  });
});

describe("the read models", () => {
  it("list a point's suspicion, lock and compression facts, and the status names the last clean point", async () => {
    const store = getInMemoryEventStore();
    try {
      const until = new Date(Date.parse(cutoff(6)) + 60_000).toISOString();
      for (const d of [...clean, cycle(6, 16, 0.99, { lockedUntil: until })]) await executeCommand(store, VM, d);
      const points = await RecoveryPointsProjection.rebuild(store, VM);
      const six = points.get("rp-6")!;
      expect(six.suspect).toEqual([{ diskId: "disk0", share: 0.99, baselineShare: expect.any(Number) }]);
      expect(six.lockedUntil).toBe(until);
      expect(points.get("rp-5")!.suspect).toBeUndefined();
      expect(points.cycleFacts("rp-6")!.diskCompression!.disk0!.incompressibleBytes).toBe(Math.round(16 * MiB * 0.99));
      const status = new StatusProjection();
      for (const e of await store.readAll()) status.apply(e);
      expect(status.get(VM, new Date(cutoff(7)))).toMatchObject({ lastCleanPointId: "rp-5", suspectPoints: [{ pointId: "rp-6" }] });

      await executeCommand(store, VM, (s) => clearSuspectPoints(s, { clearedBy: "ops", clearedByRole: "operator" }));
      await points.catchUp(store);
      expect(points.get("rp-6")!.suspect).toBeUndefined();
      // A snapshot of the projection keeps them.
      expect(RecoveryPointsProjection.fromSnapshot(JSON.parse(JSON.stringify(points.toSnapshot())))!.get("rp-6")!.lockedUntil).toBe(until);
    } finally {
      await store.close();
    }
  });
});
