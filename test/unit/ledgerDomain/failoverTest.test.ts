/** Test failover: an orthogonal flag, several at once, on the chains replication keeps growing. */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  InvalidCommandInputError,
  MergeBlockedByTestFailoverError,
  MergeInProgressError,
  NoSuchTestFailoverError,
  RecoveryPointUnavailableError,
  RecoveryPointsProjection,
  StatusProjection,
  TestFailoverExistsError,
  TestFailoversRunningError,
  completeFailover,
  executeCommand,
  getInMemoryEventStore,
  loadRelationship,
  markResyncRequired,
  pause,
  recordTestFailoverRunning,
  relationshipStream,
  startMerge,
  startResync,
  startTestFailover,
  stopTestFailover,
  type Decide,
  type EventStore,
  type RelationshipState,
} from "../../../src/ledger/index.js";
import {
  TEST_STARTED_AT,
  TEST_STOPPED_AT,
  applyRetention,
  baseImage,
  caught,
  cutoff,
  enabled,
  failedOverUnplanned,
  fold,
  image,
  incremental,
  initialCommitted,
  initialStarted,
  protect,
  run,
  testStarted,
  testStopped,
} from "./fixtures.js";
import { waitFor } from "../ledger/eventStoreContract.js";

let store: EventStore;
beforeEach(() => {
  store = getInMemoryEventStore();
});
afterEach(async () => {
  await store.close();
});

const VM = "web1";
const upTo = (n: number): Decide[] => [enabled, initialStarted, initialCommitted, ...Array.from({ length: n - 1 }, (_, i) => incremental(i + 2))];
const running =
  (testId: string, runningAt = "2025-03-01T11:00:42.000Z", timeToRunningMs = 42_000): Decide =>
  (s) =>
    recordTestFailoverRunning(s, { testId, runningAt, timeToRunningMs });

describe("startTestFailover, recordTestFailoverRunning, stopTestFailover", () => {
  it("runs a test on the latest point while replication goes on, and records its time to running and duration", async () => {
    await protect(store, VM, { lastSeq: 3, maxPoints: 3 });
    const before = await loadRelationship(store, VM);

    const started = await executeCommand(store, VM, testStarted("t1"));
    expect(started.events).toEqual([
      {
        type: "TestFailoverStarted",
        data: {
          testId: "t1",
          pointId: "rp-3",
          startedAt: TEST_STARTED_AT,
          disks: ["disk0", "disk1"].map((d) => ({
            diskId: d,
            sizeBytes: d === "disk0" ? 20 * 1024 ** 3 : 2 * 1024 ** 3,
            imagePath: image(VM, d, 3),
            chain: [baseImage(VM, d), image(VM, d, 2), image(VM, d, 3)],
          })),
        },
      },
    ]);
    // An orthogonal flag: the state, the points and their images are untouched (invariant 4).
    expect(started.newState.state).toBe("replicating");
    expect(started.newState.points).toEqual(before.state.points);
    expect(started.newState.testFailovers["t1"]).toMatchObject({ pointId: "rp-3", startedAt: TEST_STARTED_AT, runningAt: undefined });

    // Replication keeps going on top of the tested point.
    const next = await executeCommand(store, VM, incremental(4));
    expect(next.newState.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-2", "rp-3", "rp-4"]);

    const up = await executeCommand(store, VM, running("t1"));
    expect(up.events).toEqual([{ type: "TestFailoverRunning", data: { testId: "t1", runningAt: "2025-03-01T11:00:42.000Z", timeToRunningMs: 42_000 } }]);
    expect(up.newState.testFailovers["t1"]).toMatchObject({ runningAt: "2025-03-01T11:00:42.000Z", timeToRunningMs: 42_000 });
    // A second report (a retry) records nothing; the first measurement stands.
    expect((await executeCommand(store, VM, running("t1", "2025-03-01T11:05:00.000Z", 300_000))).events).toEqual([]);

    const stopped = await executeCommand(store, VM, testStopped("t1"));
    expect(stopped.events).toEqual([{ type: "TestFailoverStopped", data: { testId: "t1", stoppedAt: TEST_STOPPED_AT, durationMs: 1_800_000 } }]);
    expect(stopped.newState).toMatchObject({ state: "replicating", testFailovers: {}, lastTestFailoverAt: TEST_STARTED_AT });
    expect(stopped.newState.counters.testFailoversStarted).toBe(1);
    // Retention, blocked during the test, catches up.
    expect(await applyRetention(store, VM)).toEqual(["rp-1"]);
  });

  it("tests a chosen older point, with that point's chain", () => {
    const s = fold(VM, ...upTo(4));
    const [event] = startTestFailover(s, { testId: "drill", pointId: "rp-2", startedAt: TEST_STARTED_AT });
    expect(event).toMatchObject({ type: "TestFailoverStarted", data: { pointId: "rp-2" } });
    expect(event!.type === "TestFailoverStarted" && event!.data.disks.map((d) => d.chain)).toEqual(["disk0", "disk1"].map((d) => [baseImage(VM, d), image(VM, d, 2)]));
  });

  it.each<[string, Decide[]]>([
    ["paused", [(s) => pause(s, { reason: "maintenance" })]],
    ["resync-required", [(s) => markResyncRequired(s, { reason: "BITMAP_INCONSISTENT" })]],
    ["resynchronising", [(s) => markResyncRequired(s, { reason: "BITMAP_INCONSISTENT" }), (s) => startResync(s, { cycleSeq: 4, cutoffAt: cutoff(4), generation: 1 })]],
  ])("is allowed in %s, leaving the state as it is", (state, steps) => {
    const s = fold(VM, ...upTo(3), ...steps);
    expect(s.state).toBe(state);
    const after = run(s, testStarted("t1"));
    expect(after.state).toBe(state);
    expect(after.inFlight).toEqual(s.inFlight);
    expect(Object.keys(after.testFailovers)).toEqual(["t1"]);
  });

  it("refuses an unknown point, listing the points that can be tested", () => {
    const s = fold(VM, ...upTo(3));
    const err = (() => {
      try {
        startTestFailover(s, { testId: "t1", pointId: "rp-9", startedAt: TEST_STARTED_AT });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(RecoveryPointUnavailableError);
    expect(err).toMatchObject({ code: "RECOVERY_POINT_UNAVAILABLE", why: "unknown", availablePointIds: ["rp-1", "rp-2", "rp-3"] });
    expect((err as Error).message).toBe(
      "VM web1 has no recovery point rp-9 (never created, or merged away by retention). Available points: rp-1, rp-2, rp-3 (the last is the latest).",
    );
  });

  it("refuses the point being merged away, and any test while a merge runs", () => {
    // Retention keeps 3 points: the 4th starts the merge of rp-1 into rp-2.
    const s = fold(VM, ...upTo(4), startMerge);
    expect(s.points[0]).toMatchObject({ pointId: "rp-1", merging: true });
    expect(() => startTestFailover(s, { testId: "t1", pointId: "rp-1", startedAt: TEST_STARTED_AT })).toThrow(
      /rp-1 is being merged away by retention and can no longer be opened\. Available points: rp-2, rp-3, rp-4/,
    );
    const err = (() => {
      try {
        startTestFailover(s, { testId: "t1", startedAt: TEST_STARTED_AT });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(MergeInProgressError);
    expect((err as Error).message).toMatch(/merge of recovery point rp-1 into rp-2 is still in progress\. Finish it \(completeMerge\) before starting a test failover/);
  });

  it("refuses a testId that is already running, and accepts it again once stopped", () => {
    let s = run(fold(VM, ...upTo(3)), testStarted("t1", "rp-2"));
    const dup = () => startTestFailover(s, { testId: "t1", startedAt: TEST_STARTED_AT });
    expect(dup).toThrow(TestFailoverExistsError);
    expect(dup).toThrow("VM web1: test failover t1 is already running (on rp-2). Choose another test id, or stop t1 first.");
    s = run(s, testStopped("t1"));
    expect(() => run(s, testStarted("t1"))).not.toThrow();
  });

  it("refuses to stop or report an unknown test, naming the running ones", () => {
    const none = fold(VM, ...upTo(4));
    expect(() => stopTestFailover(none, { testId: "t9", stoppedAt: TEST_STOPPED_AT })).toThrow("VM web1: no test failover t9 is running. No test failover is running.");
    const s = fold(VM, ...upTo(4), testStarted("t-b", "rp-4"), testStarted("t-a", "rp-2"));
    const err = (() => {
      try {
        stopTestFailover(s, { testId: "t9", stoppedAt: TEST_STOPPED_AT });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(NoSuchTestFailoverError);
    expect(err).toMatchObject({ code: "NO_SUCH_TEST_FAILOVER", running: ["t-a (rp-2)", "t-b (rp-4)"] });
    expect((err as Error).message).toBe("VM web1: no test failover t9 is running. Running test failovers: t-a (rp-2), t-b (rp-4).");
    expect(() => recordTestFailoverRunning(s, { testId: "t9", runningAt: TEST_STOPPED_AT, timeToRunningMs: 1 })).toThrow(NoSuchTestFailoverError);
  });

  it("refuses malformed input and times before the start", () => {
    const s = fold(VM, ...upTo(2), testStarted("t1"));
    expect(() => startTestFailover(s, { testId: " ", startedAt: TEST_STARTED_AT })).toThrow(InvalidCommandInputError);
    expect(() => startTestFailover(s, { testId: "t2", startedAt: "now" })).toThrow(InvalidCommandInputError);
    expect(() => startTestFailover(s, { testId: "t2", pointId: "", startedAt: TEST_STARTED_AT })).toThrow(InvalidCommandInputError);
    expect(() => stopTestFailover(s, { testId: "t1", stoppedAt: "2025-03-01T10:59:59.000Z" })).toThrow(/started at .* after/);
    expect(() => recordTestFailoverRunning(s, { testId: "t1", runningAt: "2025-03-01T10:59:59.000Z", timeToRunningMs: 1 })).toThrow(/started at .* after/);
    expect(() => recordTestFailoverRunning(s, { testId: "t1", runningAt: TEST_STOPPED_AT, timeToRunningMs: -1 })).toThrow(InvalidCommandInputError);
  });
});

describe("several test failovers at once", () => {
  it("runs them side by side; retention waits for every one and catches up after the last", async () => {
    await protect(store, VM, { lastSeq: 3, maxPoints: 2, retention: false });
    await executeCommand(store, VM, testStarted("t-a", "rp-1"));
    await executeCommand(store, VM, testStarted("t-b", "rp-3"));
    await executeCommand(store, VM, testStarted("t-c", "rp-3"));
    await executeCommand(store, VM, incremental(4));

    let s: RelationshipState = (await loadRelationship(store, VM)).state;
    expect(Object.keys(s.testFailovers).sort()).toEqual(["t-a", "t-b", "t-c"]);
    expect(s.counters.testFailoversStarted).toBe(3);
    expect(await caught(() => executeCommand(store, VM, startMerge))).toMatchObject({
      code: "MERGE_BLOCKED_BY_TEST_FAILOVER",
      testIds: ["t-a", "t-b", "t-c"],
    });

    await executeCommand(store, VM, testStopped("t-a"));
    await executeCommand(store, VM, testStopped("t-c"));
    // One test still runs: its chain starts at the base the merge would rewrite.
    expect(await caught(() => executeCommand(store, VM, startMerge))).toBeInstanceOf(MergeBlockedByTestFailoverError);
    await executeCommand(store, VM, testStopped("t-b"));
    expect(await applyRetention(store, VM)).toEqual(["rp-1", "rp-2"]);
    s = (await loadRelationship(store, VM)).state;
    expect(s.points.map((p) => p.pointId)).toEqual(["rp-3", "rp-4"]);
    expect(s.testFailovers).toEqual({});
  });

  it("keep running through a failover; completing it waits for them", () => {
    let s = fold(VM, ...upTo(3), testStarted("t1", "rp-2"), running("t1"));
    s = run(s, failedOverUnplanned());
    expect(s.state).toBe("failed-over-waiting-completion");
    expect(Object.keys(s.testFailovers)).toEqual(["t1"]);
    const err = (() => {
      try {
        completeFailover(s);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(TestFailoversRunningError);
    expect((err as Error).message).toBe("VM web1: completeFailover would delete images under running test failover(s) t1. Stop the test failover(s) first.");
    s = run(s, testStopped("t1"));
    expect(run(s, completeFailover).state).toBe("failed-over");
  });
});

describe("projections of test failovers", () => {
  it("show the running tests, their points and time to running, the same live and after a rebuild", async () => {
    const live = await StatusProjection.rebuild(store);
    const sub = store.subscribe({ streamPrefix: "replication-" }, (e) => live.apply(e));
    try {
      await protect(store, VM, { lastSeq: 3, maxPoints: 3 });
      await executeCommand(store, VM, testStarted("t1", "rp-2"));
      await executeCommand(store, VM, testStarted("t2"));
      await executeCommand(store, VM, running("t2"));
      await executeCommand(store, VM, testStarted("t3", "rp-1"));
      await executeCommand(store, VM, testStopped("t3"));

      const now = new Date(cutoff(4));
      const rebuilt = await StatusProjection.rebuild(store);
      expect(rebuilt.get(VM, now)).toMatchObject({
        state: "replicating",
        activeTestFailovers: 2,
        failover: undefined,
        testFailovers: [
          { testId: "t1", pointId: "rp-2", startedAt: TEST_STARTED_AT, runningAt: undefined, timeToRunningMs: undefined },
          { testId: "t2", pointId: "rp-3", startedAt: TEST_STARTED_AT, runningAt: "2025-03-01T11:00:42.000Z", timeToRunningMs: 42_000 },
        ],
      });
      const last = (await store.readStream(relationshipStream(VM))).at(-1)!;
      await waitFor(() => live.checkpoint >= last.globalPosition, "live status to catch up");
      expect(live.get(VM, now)).toEqual(rebuilt.get(VM, now));

      const catalogue = await RecoveryPointsProjection.rebuild(store, VM);
      expect(catalogue.list().map((p) => [p.pointId, p.testIds])).toEqual([
        ["rp-1", []],
        ["rp-2", ["t1"]],
        ["rp-3", ["t2"]],
      ]);
    } finally {
      await sub.close();
    }
  });
});
