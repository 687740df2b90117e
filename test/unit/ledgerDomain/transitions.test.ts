import { describe, expect, it } from "vitest";
import {
  InvalidTransitionError,
  REPLICATION_STATES,
  commitCycle,
  completeMerge,
  enableReplication,
  executeCommand,
  failCycle,
  getInMemoryEventStore,
  markResyncRequired,
  pause,
  refuseStaleGeneration,
  relationshipEvent,
  relationshipStream,
  resume,
  startInitialReplication,
  startMerge,
  startResync,
  type Decide,
  type RelationshipState,
  type ReplicationStateName,
} from "../../../src/ledger/index.js";
import { cutoff, cycleInput, enableInput, enabled, fold, incremental, initialCommitted, initialStarted, record } from "./fixtures.js";

const VM = "web1";

/** One reachable relationship per state, built through the commands (failover events recorded as such). */
const replicating = [enabled, initialStarted, initialCommitted, incremental(2)];
const STATES: Record<ReplicationStateName, Decide[]> = {
  "not-enabled": [],
  "ready-for-initial-replication": [enabled],
  "initial-replication-in-progress": [enabled, initialStarted],
  replicating,
  paused: [...replicating, (s) => pause(s, { reason: "operator" })],
  "resync-required": [...replicating, (s) => markResyncRequired(s, { reason: "BITMAP_INCONSISTENT" })],
  resynchronising: [
    ...replicating,
    (s) => markResyncRequired(s, { reason: "BITMAP_INCONSISTENT" }),
    (s) => startResync(s, { cycleSeq: 3, cutoffAt: cutoff(3), generation: 1 }),
  ],
  "prepared-for-planned-failover": [...replicating, record(relationshipEvent("FailoverPrepared", { cycleSeq: 2 }))],
  "failed-over-waiting-completion": [
    ...replicating,
    record(relationshipEvent("FailedOver", { pointId: "rp-2", generation: 2, kind: "unplanned" })),
  ],
  "failed-over": [
    ...replicating,
    record(relationshipEvent("FailedOver", { pointId: "rp-2", generation: 2, kind: "unplanned" })),
    record(relationshipEvent("FailoverCompleted", {})),
  ],
};

const inState = (name: ReplicationStateName): RelationshipState => {
  const s = fold(VM, ...STATES[name]);
  expect(s.state).toBe(name);
  return s;
};

// The generation the relationship is at, so these cases fail on the state, not as stale messages.
const gen = (s: RelationshipState) => Math.max(1, s.generation);

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
  ["commitCycle(incremental)", "prepared-for-planned-failover", (s) => commitCycle(s, cycleInput(VM, 9)), /cancel the planned failover/],
  ["commitCycle(incremental)", "failed-over-waiting-completion", (s) => commitCycle(s, cycleInput(VM, 9, "incremental", { generation: gen(s) })), /Complete or cancel the failover/],
  ["commitCycle(incremental)", "failed-over", (s) => commitCycle(s, cycleInput(VM, 9, "incremental", { generation: gen(s) })), /reverse replication/],
  ["commitCycle(full)", "replicating", (s) => commitCycle(s, cycleInput(VM, 9, "full")), /already in sync/],
  ["commitCycle(resync)", "replicating", (s) => commitCycle(s, cycleInput(VM, 9, "resync")), /already in sync/],
  ["failCycle", "ready-for-initial-replication", (s) => failCycle(s, { cycleSeq: 9, generation: 1, reason: "X", message: "" }), /Start the initial replication/],
  ["failCycle", "failed-over", (s) => failCycle(s, { cycleSeq: 9, generation: gen(s), reason: "X", message: "" }), /reverse replication/],
  ["startMerge", "ready-for-initial-replication", startMerge, /Start the initial replication/],
  ["startMerge", "failed-over-waiting-completion", startMerge, /Complete or cancel the failover/],
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
      "VM web1 is in state resync-required; commitCycle(incremental) needs replicating. Run a resynchronisation first.",
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
