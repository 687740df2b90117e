import { describe, expect, it } from "vitest";
import {
  InvalidTransitionError,
  REPLICATION_STATES,
  acknowledgeGeneration,
  cancelFailover,
  commitCycle,
  completeFailover,
  completeMerge,
  enableReplication,
  executeCommand,
  failCycle,
  failover,
  getInMemoryEventStore,
  markResyncRequired,
  pause,
  prepareFailover,
  recordTestFailoverRunning,
  refuseStaleGeneration,
  relationshipStream,
  resume,
  startInitialReplication,
  startMerge,
  startResync,
  startReverseReplication,
  type Decide,
  type RelationshipState,
  type ReplicationStateName,
} from "../../../src/ledger/index.js";
import {
  TEST_STOPPED_AT,
  committed,
  cutoff,
  cycleInput,
  enableInput,
  enabled,
  failedOverUnplanned,
  fold,
  incremental,
  initialCommitted,
  initialStarted,
  testStarted,
  testStopped,
} from "./fixtures.js";

const VM = "web1";

/** One reachable relationship per state, built through the commands. */
const replicating = [enabled, initialStarted, initialCommitted, incremental(2)];
const STATES: Record<ReplicationStateName, Decide[]> = {
  "not-enabled": [],
  "ready-for-initial-replication": [enabled],
  "initial-replication-in-progress": [enabled, initialStarted],
  replicating,
  paused: [...replicating, (s) => pause(s, { reason: "operator" })],
  "resync-required": [...replicating, (s) => markResyncRequired(s, { reason: "BITMAP_INCONSISTENT" })],
  resynchronising: [...replicating, (s) => markResyncRequired(s, { reason: "BITMAP_INCONSISTENT" }), (s) => startResync(s, { cycleSeq: 3, cutoffAt: cutoff(3), generation: 1 })],
  "prepared-for-planned-failover": [...replicating, (s) => prepareFailover(s, { preparedAt: committed(3), primaryStoppedAt: cutoff(3) })],
  "failed-over-waiting-completion": [...replicating, failedOverUnplanned("rp-2")],
  "failed-over": [...replicating, failedOverUnplanned("rp-2"), completeFailover],
};

const inState = (name: ReplicationStateName): RelationshipState => {
  const s = fold(VM, ...STATES[name]);
  expect(s.state).toBe(name);
  return s;
};

// The generation the relationship is at, so these cases fail on the state, not as stale messages.
const gen = (s: RelationshipState) => Math.max(1, s.generation);
const prepare: Decide = (s) => prepareFailover(s, { preparedAt: committed(9), primaryStoppedAt: cutoff(9) });
const reverse: Decide = (s) => startReverseReplication(s, { newPrimarySiteId: "site-b", newPrimaryIdentity: "agent.site-b.example" });

type Case = [command: string, state: ReplicationStateName, decide: Decide, hint: RegExp];
const CASES: Case[] = [
  ["enableReplication", "replicating", (s) => enableReplication(s, enableInput()), /already enabled/],
  ["enableReplication", "paused", (s) => enableReplication(s, enableInput()), /already enabled/],
  ["startInitialReplication", "not-enabled", (s) => startInitialReplication(s, { cycleSeq: 9, cutoffAt: cutoff(9), generation: 1 }), /Enable replication first/],
  ["startInitialReplication", "initial-replication-in-progress", (s) => startInitialReplication(s, { cycleSeq: 9, cutoffAt: cutoff(9), generation: 1 }), /already running/],
  ["startInitialReplication", "replicating", (s) => startInitialReplication(s, { cycleSeq: 9, cutoffAt: cutoff(9), generation: 1 }), /no recovery action/],
  ["commitCycle(incremental)", "not-enabled", (s) => commitCycle(s, cycleInput(VM, 9)), /Enable replication first/],
  ["commitCycle(incremental)", "ready-for-initial-replication", (s) => commitCycle(s, cycleInput(VM, 9)), /Start the initial replication/],
  ["commitCycle(incremental)", "initial-replication-in-progress", (s) => commitCycle(s, cycleInput(VM, 9)), /Only the full initial cycle/],
  ["commitCycle(incremental)", "paused", (s) => commitCycle(s, cycleInput(VM, 9)), /Resume replication first/],
  ["commitCycle(incremental)", "resync-required", (s) => commitCycle(s, cycleInput(VM, 9)), /Run a resynchronisation first/],
  ["commitCycle(incremental)", "resynchronising", (s) => commitCycle(s, cycleInput(VM, 9)), /Wait for the resynchronisation/],
  ["commitCycle(full)", "prepared-for-planned-failover", (s) => commitCycle(s, cycleInput(VM, 9, "full")), /already in sync/],
  [
    "commitCycle(incremental)",
    "failed-over-waiting-completion",
    (s) => commitCycle(s, cycleInput(VM, 9, "incremental", { generation: gen(s) })),
    /complete the failover, or cancel the failover/,
  ],
  ["commitCycle(incremental)", "failed-over", (s) => commitCycle(s, cycleInput(VM, 9, "incremental", { generation: gen(s) })), /reverse replication/],
  ["commitCycle(full)", "replicating", (s) => commitCycle(s, cycleInput(VM, 9, "full")), /already in sync/],
  ["commitCycle(resync)", "replicating", (s) => commitCycle(s, cycleInput(VM, 9, "resync")), /already in sync/],
  ["failCycle", "ready-for-initial-replication", (s) => failCycle(s, { cycleSeq: 9, generation: 1, reason: "X", message: "" }), /Start the initial replication/],
  ["failCycle", "failed-over", (s) => failCycle(s, { cycleSeq: 9, generation: gen(s), reason: "X", message: "" }), /reverse replication/],
  ["startMerge", "ready-for-initial-replication", startMerge, /Start the initial replication/],
  ["startMerge", "failed-over-waiting-completion", startMerge, /complete the failover, or cancel the failover/],
  ["completeMerge", "not-enabled", (s) => completeMerge(s, { pointId: "rp-1", disks: [] }), /Enable replication first/],
  ["markResyncRequired", "ready-for-initial-replication", (s) => markResyncRequired(s, { reason: "X" }), /Start the initial replication/],
  ["markResyncRequired", "initial-replication-in-progress", (s) => markResyncRequired(s, { reason: "X" }), /needs no resync/],
  ["markResyncRequired", "failed-over", (s) => markResyncRequired(s, { reason: "X" }), /reverse replication/],
  ["startResync", "replicating", (s) => startResync(s, { cycleSeq: 9, cutoffAt: cutoff(9), generation: 1 }), /is in sync/],
  ["startResync", "paused", (s) => startResync(s, { cycleSeq: 9, cutoffAt: cutoff(9), generation: 1 }), /Resume replication first/],
  ["pause", "paused", (s) => pause(s, { reason: "again" }), /already paused \(operator\)/],
  ["pause", "resync-required", (s) => pause(s, { reason: "r" }), /Run a resynchronisation first/],
  ["pause", "prepared-for-planned-failover", (s) => pause(s, { reason: "r" }), /cancel the planned failover/],
  ["resume", "replicating", resume, /not paused/],
  ["resume", "resync-required", resume, /Run a resynchronisation first/],
  ["refuseStaleGeneration", "not-enabled", (s) => refuseStaleGeneration(s, { presentedGeneration: 1, peerIdentity: "x" }), /Enable replication first/],
  // Test failover.
  ["startTestFailover", "not-enabled", testStarted("t1"), /Enable replication first/],
  ["startTestFailover", "ready-for-initial-replication", testStarted("t1"), /Start the initial replication first/],
  ["startTestFailover", "initial-replication-in-progress", testStarted("t1"), /Wait for the initial replication/],
  ["startTestFailover", "prepared-for-planned-failover", testStarted("t1"), /cancel the planned failover first/],
  ["startTestFailover", "failed-over-waiting-completion", testStarted("t1"), /check the failed-over VM itself/],
  ["startTestFailover", "failed-over", testStarted("t1"), /start reverse replication, then test from the other site/],
  ["recordTestFailoverRunning", "not-enabled", (s) => recordTestFailoverRunning(s, { testId: "t1", runningAt: TEST_STOPPED_AT, timeToRunningMs: 1 }), /Enable replication first/],
  ["stopTestFailover", "not-enabled", testStopped("t1"), /Enable replication first/],
  // Planned failover.
  ["prepareFailover", "ready-for-initial-replication", prepare, /Start the initial replication first/],
  ["prepareFailover", "paused", prepare, /resume replication first, or fail over unplanned/],
  ["prepareFailover", "resync-required", prepare, /let the resynchronisation complete first/],
  ["prepareFailover", "resynchronising", prepare, /let the resynchronisation complete first/],
  ["prepareFailover", "prepared-for-planned-failover", prepare, /already prepared/],
  ["prepareFailover", "failed-over-waiting-completion", prepare, /complete the failover, or cancel the failover/],
  ["failover(planned)", "replicating", (s) => failover(s, { kind: "planned" }), /Prepare the planned failover first/],
  ["failover(planned)", "paused", (s) => failover(s, { kind: "planned" }), /Resume replication first/],
  ["failover(planned)", "failed-over-waiting-completion", (s) => failover(s, { kind: "planned" }), /complete the failover, or cancel the failover/],
  // Unplanned failover.
  ["failover(unplanned)", "not-enabled", failedOverUnplanned(), /Enable replication first/],
  ["failover(unplanned)", "ready-for-initial-replication", failedOverUnplanned(), /Start the initial replication first/],
  ["failover(unplanned)", "initial-replication-in-progress", failedOverUnplanned(), /Wait for the initial replication/],
  ["failover(unplanned)", "failed-over-waiting-completion", failedOverUnplanned(), /complete the failover, or cancel the failover/],
  ["failover(unplanned)", "failed-over", failedOverUnplanned(), /start reverse replication/],
  // Cancel, complete, reverse.
  ["cancelFailover", "not-enabled", cancelFailover, /Enable replication first/],
  ["cancelFailover", "replicating", cancelFailover, /nothing to cancel/],
  ["cancelFailover", "paused", cancelFailover, /nothing to cancel/],
  ["cancelFailover", "failed-over", cancelFailover, /cannot be cancelled: start reverse replication, then fail back/],
  ["completeFailover", "replicating", completeFailover, /not failed over; there is nothing to complete/],
  ["completeFailover", "prepared-for-planned-failover", completeFailover, /fail over first/],
  ["completeFailover", "failed-over", completeFailover, /already complete/],
  ["startReverseReplication", "replicating", reverse, /not failed over: reverse replication starts from the site/],
  ["startReverseReplication", "prepared-for-planned-failover", reverse, /only prepared: fail over first/],
  ["startReverseReplication", "failed-over-waiting-completion", reverse, /After an unplanned failover, check the failed-over VM and complete the failover first/],
  ["acknowledgeGeneration", "not-enabled", (s) => acknowledgeGeneration(s, { presentedGeneration: 1, peerIdentity: "x" }), /Enable replication first/],
];

describe("forbidden transitions", () => {
  it.each(CASES)("%s in state %s is an InvalidTransitionError naming the state", (command, stateName, decide, hint) => {
    const s = inState(stateName);
    let err: unknown;
    try {
      decide(s);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidTransitionError);
    const e = err as InvalidTransitionError;
    expect(e.code).toBe("INVALID_TRANSITION");
    expect(e.state).toBe(stateName);
    expect(e.command).toBe(command);
    expect(e.message).toContain(`VM ${VM} is in state ${stateName}; ${command} needs `);
    expect(e.message).toMatch(hint);
  });

  it("covers every state", () => {
    expect(new Set(CASES.map((c) => c[1]))).toEqual(new Set(REPLICATION_STATES));
  });

  it("says what to do, in the words an operator reads", () => {
    expect(() => commitCycle(inState("resync-required"), cycleInput(VM, 9))).toThrow(
      "VM web1 is in state resync-required; commitCycle(incremental) needs replicating or prepared-for-planned-failover. Run a resynchronisation first.",
    );
  });

  it("appends nothing when executeCommand's decision refuses", async () => {
    const store = getInMemoryEventStore();
    await executeCommand(store, VM, enabled);
    await expect(executeCommand(store, VM, enabled)).rejects.toBeInstanceOf(InvalidTransitionError);
    expect(await store.streamVersion(relationshipStream(VM))).toBe(0n);
    await store.close();
  });
});
