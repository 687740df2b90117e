import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  InvalidCommandInputError,
  MergeBlockedByTestFailoverError,
  OutOfOrderCycleError,
  RecoveryPointsProjection,
  StaleGenerationError,
  commitCycle,
  executeCommand,
  failCycle,
  getInMemoryEventStore,
  refuseStaleGeneration,
  startInitialReplication,
  startMerge,
  type EventStore,
} from "../../../src/ledger/index.js";
import {
  applyRetention,
  caught,
  cutoff,
  cycleInput,
  enabled,
  fold,
  incremental,
  initialCommitted,
  initialStarted,
  protect,
  failedOverUnplanned,
  run,
  testStarted,
  testStopped,
} from "./fixtures.js";

describe("stale generation", () => {
  const failedOver = () => fold("web1", enabled, initialStarted, initialCommitted, incremental(2), failedOverUnplanned("rp-2"));

  it("refuses a cycle from the old primary after a failover, telling it not to resume the VM", () => {
    const s = failedOver();
    let err: unknown;
    try {
      commitCycle(s, cycleInput("web1", 3, "incremental", { generation: 1 }));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StaleGenerationError);
    const e = err as StaleGenerationError;
    expect(e).toMatchObject({ code: "STALE_GENERATION", presentedGeneration: 1, currentGeneration: 2, vmId: "web1" });
    expect(e.message).toMatch(/old primary/);
    expect(e.message).toMatch(/must not resume the VM/);
  });

  it("refuses every data-plane command carrying another generation, including a newer one", () => {
    const s = fold("web1", enabled, initialStarted, initialCommitted);
    expect(() => commitCycle(s, cycleInput("web1", 2, "incremental", { generation: 2 }))).toThrow(/ledger is only at generation 1/);
    expect(() => failCycle(s, { cycleSeq: 2, generation: 3, reason: "X", message: "" })).toThrow(StaleGenerationError);
    const ready = fold("web1", enabled);
    expect(() => startInitialReplication(ready, { cycleSeq: 1, cutoffAt: cutoff(1), generation: 2 })).toThrow(StaleGenerationError);
  });

  it("records the refusal for audit", () => {
    let s = failedOver();
    s = run(s, (x) => refuseStaleGeneration(x, { presentedGeneration: 1, peerIdentity: "agent.site-a.example" }));
    expect(s.counters.staleGenerationRefusals).toBe(1);
    expect(refuseStaleGeneration(failedOver(), { presentedGeneration: 1, peerIdentity: "agent.site-a.example" })).toEqual([
      { type: "StaleGenerationRefused", data: { presentedGeneration: 1, currentGeneration: 2, peerIdentity: "agent.site-a.example" } },
    ]);
    expect(() => refuseStaleGeneration(s, { presentedGeneration: 2, peerIdentity: "x" })).toThrow(InvalidCommandInputError);
  });
});

describe("cycle ordering", () => {
  const replicatingAt3 = () => fold("vm", enabled, initialStarted, initialCommitted, incremental(2), incremental(3));

  it("refuses a duplicate or an older cycle", () => {
    const s = replicatingAt3();
    for (const seq of [3, 2]) {
      let err: unknown;
      try {
        commitCycle(s, cycleInput("vm", seq));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(OutOfOrderCycleError);
      expect(err).toMatchObject({ code: "OUT_OF_ORDER_CYCLE", cycleSeq: seq, lastCycleSeq: 3 });
      expect((err as Error).message).toMatch(/duplicate or a delayed delivery/);
    }
    // Gaps are fine: a failed or skipped cycle's changes travel in the next one.
    expect(run(s, incremental(7)).lastCycleSeq).toBe(7);
  });

  it("a failed cycle's seq is used up", () => {
    const s = run(replicatingAt3(), (x) => failCycle(x, { cycleSeq: 4, generation: 1, reason: "TIMEOUT", message: "" }));
    expect(() => commitCycle(s, cycleInput("vm", 4))).toThrow(OutOfOrderCycleError);
    expect(() => failCycle(s, { cycleSeq: 4, generation: 1, reason: "TIMEOUT", message: "" })).toThrow(OutOfOrderCycleError);
  });

  it("the full cycle must be the one that was started", () => {
    const s = fold("vm", enabled, initialStarted);
    expect(() => commitCycle(s, cycleInput("vm", 2, "full"))).toThrow(/does not match cycle 1, the one that was started/);
    expect(() => startInitialReplication(run(s, initialCommitted), { cycleSeq: 1, cutoffAt: cutoff(1), generation: 1 })).toThrow();
  });

  it("refuses a cut-off earlier than the latest point's", () => {
    const s = replicatingAt3();
    expect(() => commitCycle(s, cycleInput("vm", 4, "incremental", { cutoffAt: cutoff(2), committedAt: cutoff(5) }))).toThrow(/before the latest point rp-3/);
  });
});

describe("merges and test failovers", () => {
  let store: EventStore;
  beforeEach(() => {
    store = getInMemoryEventStore();
  });
  afterEach(async () => {
    await store.close();
  });

  it("waits below a running test failover and proceeds once it stops", async () => {
    await protect(store, "web1", { lastSeq: 3, maxPoints: 2, retention: false });
    await executeCommand(store, "web1", testStarted("t-dr-drill", "rp-3"));

    const err = await caught(() => executeCommand(store, "web1", startMerge));
    expect(err).toBeInstanceOf(MergeBlockedByTestFailoverError);
    expect(err).toMatchObject({ code: "MERGE_BLOCKED_BY_TEST_FAILOVER", pointId: "rp-1", intoPointId: "rp-2", testIds: ["t-dr-drill"] });
    expect((err as Error).message).toMatch(/runs once the test failover is stopped/);

    // Replication continues during the test (invariant 4); only retention waits.
    await executeCommand(store, "web1", incremental(4));
    const catalogue = await RecoveryPointsProjection.rebuild(store, "web1");
    expect(catalogue.get("rp-3")!.testIds).toEqual(["t-dr-drill"]);

    await executeCommand(store, "web1", testStopped("t-dr-drill"));
    expect(await applyRetention(store, "web1")).toEqual(["rp-1", "rp-2"]);
  });

  it("refuses while a test runs on the point being merged or the one it merges into", () => {
    const base = [enabled, initialStarted, initialCommitted, incremental(2), incremental(3), incremental(4)];
    for (const pointId of ["rp-1", "rp-2"]) {
      const s = fold("vm", ...base, testStarted("t1", pointId));
      expect(() => startMerge(s)).toThrow(MergeBlockedByTestFailoverError);
    }
  });

  it("allows several concurrent tests and names every one that blocks", () => {
    let s = fold("vm", enabled, initialStarted, initialCommitted, incremental(2), incremental(3), incremental(4));
    s = run(s, testStarted("t-a", "rp-2"));
    s = run(s, testStarted("t-b", "rp-4"));
    expect(Object.keys(s.testFailovers).sort()).toEqual(["t-a", "t-b"]);
    expect(() => startMerge(s)).toThrow(/test failover\(s\) t-a, t-b/);
    s = run(s, testStopped("t-a"));
    expect(() => startMerge(s)).toThrow(/test failover\(s\) t-b\./);
    s = run(s, testStopped("t-b"));
    expect(startMerge(s)).toEqual([{ type: "RecoveryPointMergeStarted", data: { pointId: "rp-1", intoPointId: "rp-2" } }]);
    expect(s.counters.testFailoversStarted).toBe(2);
  });
});
