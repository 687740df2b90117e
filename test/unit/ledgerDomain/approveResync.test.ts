/** `qreplica resync`'s go-ahead is a ledger event: it names its operator and outlives the site's process. */
import { describe, expect, it } from "vitest";
import {
  InvalidCommandInputError,
  InvalidTransitionError,
  RecoveryPointsProjection,
  ResyncAlreadyApprovedError,
  StatusProjection,
  approveResync,
  cancelFailover,
  commitCycle,
  completeFailover,
  executeCommand,
  failCycle,
  getInMemoryEventStore,
  loadRelationship,
  markResyncRequired,
  pause,
  prepareFailover,
  requestResync,
  resyncStartedMetadata,
  startResync,
  type Decide,
  type EventStore,
  type RelationshipState,
} from "../../../src/ledger/index.js";
import { REPLICATION_STATES, type ReplicationStateName } from "../../../src/ledger/domain/states.js";
import { committed, cutoff, cycleInput, enabled, failedOverUnplanned, fold, incremental, initialCommitted, initialStarted, protect, run } from "./fixtures.js";

const VM = "web1";
const OPERATOR = { approvedBy: "ops-alice", approvedByRole: "operator" };
const approve =
  (input = OPERATOR): Decide =>
  (s) =>
    approveResync(s, input);
const replicating = [enabled, initialStarted, initialCommitted, incremental(2)];
const lost: Decide = (s) => markResyncRequired(s, { reason: "vda: BITMAP_MISSING" });
const resyncStarted =
  (seq: number): Decide =>
  (s) =>
    startResync(s, { cycleSeq: seq, cutoffAt: cutoff(seq), generation: 1 });

/** One relationship per state, as in transitions.test.ts. */
const STATES: Record<ReplicationStateName, Decide[]> = {
  "not-enabled": [],
  "ready-for-initial-replication": [enabled],
  "initial-replication-in-progress": [enabled, initialStarted],
  replicating,
  paused: [...replicating, (s) => pause(s, { reason: "WAN" })],
  "resync-required": [...replicating, lost],
  resynchronising: [...replicating, lost, resyncStarted(3)],
  "prepared-for-planned-failover": [...replicating, (s) => prepareFailover(s, { preparedAt: committed(3), primaryStoppedAt: cutoff(3) })],
  "failed-over-waiting-completion": [...replicating, failedOverUnplanned("rp-2")],
  "failed-over": [...replicating, failedOverUnplanned("rp-2"), completeFailover],
};
const inState = (name: ReplicationStateName): RelationshipState => {
  const s = fold(VM, ...STATES[name]);
  expect(s.state).toBe(name);
  return s;
};

describe("approveResync", () => {
  it("records the go-ahead of a resync-required VM, which stands until the resync completes", () => {
    let s = inState("resync-required");
    expect(approve()(s)).toEqual([{ type: "ResyncApproved", data: { approvedBy: "ops-alice", approvedByRole: "operator" } }]);
    s = run(s, approve());
    expect(s).toMatchObject({ state: "resync-required", resyncReason: "vda: BITMAP_MISSING", resyncApproval: OPERATOR });
    s = run(s, resyncStarted(3));
    expect(s).toMatchObject({ state: "resynchronising", resyncApproval: OPERATOR });
    // An interrupted resync runs again on the same go-ahead: the resync it approved has not happened.
    s = run(s, (x) => failCycle(x, { cycleSeq: 3, generation: 1, reason: "TRANSPORT_CLOSED", message: "peer went away" }));
    expect(s).toMatchObject({ state: "resync-required", resyncApproval: OPERATOR });
    s = run(s, resyncStarted(4));
    s = run(s, lost);
    expect(s).toMatchObject({ state: "resync-required", resyncApproval: OPERATOR });
    s = run(s, resyncStarted(5));
    s = run(s, (x) => commitCycle(x, cycleInput(VM, 5, "resync")));
    expect(s).toMatchObject({ state: "replicating", resyncApproval: undefined, resyncReason: undefined });
    // The next loss of change tracking waits for a new go-ahead.
    expect(run(s, lost).resyncApproval).toBeUndefined();
  });

  it.each(REPLICATION_STATES.filter((x) => x !== "resync-required"))("is refused in state %s", (name) => {
    expect(() => approve()(inState(name))).toThrow(InvalidTransitionError);
  });

  it("says why: an in-sync VM must be marked first, a running resync is waited for", () => {
    expect(() => approve()(inState("replicating"))).toThrow(/change tracking is intact; mark it resync-required first/);
    expect(() => approve()(inState("paused"))).toThrow(/change tracking is intact/);
    expect(() => approve()(inState("resynchronising"))).toThrow(/already resynchronising: wait for it to finish/);
    expect(() => approve()(inState("failed-over"))).toThrow(/start reverse replication/);
  });

  it("refuses a second go-ahead, naming the first operator, and malformed callers", () => {
    const s = run(inState("resync-required"), approve());
    const second = () => approve({ approvedBy: "ops-bob", approvedByRole: "admin" })(s);
    expect(second).toThrow(ResyncAlreadyApprovedError);
    expect(second).toThrow(/already approved by ops-alice/);
    expect(() => approve({ approvedBy: " ", approvedByRole: "operator" })(inState("resync-required"))).toThrow(InvalidCommandInputError);
    expect(() => approve({ approvedBy: "ops-alice", approvedByRole: "" })(inState("resync-required"))).toThrow(InvalidCommandInputError);
  });

  it("is dropped by a failover: after a cancel the resync needs a go-ahead given after it", () => {
    const s = run(inState("resync-required"), approve());
    const failed = run(s, failedOverUnplanned());
    expect(failed.resyncApproval).toBeUndefined();
    const back = run(failed, cancelFailover);
    expect(back).toMatchObject({ state: "resync-required", resyncApproval: undefined });
    expect(approve()(back)).toHaveLength(1);
  });
});

describe("requestResync (the site's Resync command)", () => {
  it.each<ReplicationStateName>(["replicating", "paused"])("marks a %s VM resync-required by its operator, then approves, in one decision", (name) => {
    const events = requestResync(inState(name), OPERATOR);
    expect(events).toEqual([
      { type: "ResyncRequired", data: { reason: "requested by ops-alice" } },
      { type: "ResyncApproved", data: OPERATOR },
    ]);
  });

  it("only approves a VM already resync-required, and refuses where no resync can follow", () => {
    expect(requestResync(inState("resync-required"), OPERATOR).map((e) => e.type)).toEqual(["ResyncApproved"]);
    for (const name of [
      "not-enabled",
      "ready-for-initial-replication",
      "initial-replication-in-progress",
      "resynchronising",
      "failed-over-waiting-completion",
      "failed-over",
    ] as const) {
      expect(() => requestResync(inState(name), OPERATOR), name).toThrow(InvalidTransitionError);
    }
    expect(() => requestResync(run(inState("resync-required"), approve()), OPERATOR)).toThrow(ResyncAlreadyApprovedError);
  });

  it("is stored with its caller, survives a reload of the ledger, and leaves the projections working", async () => {
    const store = getInMemoryEventStore();
    try {
      await protect(store, VM, { lastSeq: 2 });
      await executeCommand(store, VM, lost);
      await executeCommand(store, VM, (s) => requestResync(s, OPERATOR), { metadata: { actor: "ops-alice", actorRole: "operator" } });
      const recorded = (await store.readAll({})).filter((e) => e.type === "ResyncApproved");
      expect(recorded).toHaveLength(1);
      expect(recorded[0]!.metadata).toMatchObject({ actor: "ops-alice", actorRole: "operator" });
      // What a restarted site folds: the go-ahead is there without anything held in memory.
      const { state } = await loadRelationship(store, VM);
      expect(state).toMatchObject({ state: "resync-required", resyncApproval: OPERATOR });

      const status = await StatusProjection.rebuild(store);
      expect(status.get(VM, new Date())).toMatchObject({ state: "resync-required", resyncReason: "vda: BITMAP_MISSING", resyncApprovedBy: "ops-alice" });
      const points = await RecoveryPointsProjection.rebuild(store, VM);
      expect(points.list().map((p) => p.pointId)).toEqual(["rp-1", "rp-2"]);

      await executeCommand(store, VM, resyncStarted(3));
      await executeCommand(store, VM, (s) => commitCycle(s, cycleInput(VM, 3, "resync")));
      await status.catchUp(store);
      await points.catchUp(store);
      expect(status.get(VM, new Date())).toMatchObject({ state: "replicating", resyncApprovedBy: undefined });
      expect(points.list().map((p) => p.pointId)).toEqual(["rp-1", "rp-2", "rp-3"]);
    } finally {
      await store.close();
    }
  });
});

describe("ResyncStarted names the approver of the state it is decided on", () => {
  /** A store on which an operator's approval lands between the command's read and its append, once. */
  function racingApproval(store: EventStore): EventStore {
    let raced = false;
    return new Proxy(store, {
      get(target, prop, receiver) {
        if (prop !== "append") return Reflect.get(target, prop, receiver) as unknown;
        return async (...args: Parameters<EventStore["append"]>) => {
          if (!raced && args[1].some((e) => e.type === "ResyncStarted")) {
            raced = true;
            await executeCommand(target, VM, approve(), { metadata: { actor: OPERATOR.approvedBy, actorRole: OPERATOR.approvedByRole } });
          }
          return target.append(...args);
        };
      },
    });
  }

  it("an approval landing after the state was read (the resync's Hello) and before ResyncStarted is appended is named by it", async () => {
    const inner = getInMemoryEventStore();
    try {
      await protect(inner, VM, { lastSeq: 2 });
      await executeCommand(inner, VM, lost);
      const store = racingApproval(inner);
      // What the site held when it decided to begin the resync: no go-ahead yet.
      const before = (await loadRelationship(store, VM)).state;
      expect(before.resyncApproval).toBeUndefined();
      const r = await executeCommand(store, VM, resyncStarted(3), { metadata: resyncStartedMetadata });
      expect(r.attempts).toBe(2);
      const events = await inner.readAll({});
      expect(events.map((e) => e.type).slice(-2)).toEqual(["ResyncApproved", "ResyncStarted"]);
      expect(events.at(-1)!.metadata).toEqual({ actor: "ops-alice", actorRole: "operator" });
      // The metadata computed from the earlier state would have named nobody.
      expect(resyncStartedMetadata(before)).toBeUndefined();
    } finally {
      await inner.close();
    }
  });

  it("an automatic resync (no approval) carries no actor", async () => {
    const store = getInMemoryEventStore();
    try {
      await protect(store, VM, { lastSeq: 2 });
      await executeCommand(store, VM, lost);
      await executeCommand(store, VM, resyncStarted(3), { metadata: resyncStartedMetadata });
      expect((await store.readAll({})).at(-1)).toMatchObject({ type: "ResyncStarted", metadata: {} });
    } finally {
      await store.close();
    }
  });
});
