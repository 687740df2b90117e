import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  InvalidCommandInputError,
  MergeInProgressError,
  NoSuchMergeError,
  completeMerge,
  enableReplication,
  evolve,
  executeCommand,
  failCycle,
  getInMemoryEventStore,
  loadRelationship,
  markResyncRequired,
  pause,
  relationshipStream,
  resume,
  startInitialReplication,
  startMerge,
  startResync,
  commitCycle,
  verifyLedger,
  type EventStore,
} from "../../../src/ledger/index.js";
import {
  applyRetention,
  baseImage,
  caught,
  cutoff,
  cycleInput,
  enableInput,
  fold,
  enabled,
  image,
  incremental,
  initialCommitted,
  initialStarted,
  protect,
  run,
} from "./fixtures.js";

let store: EventStore;
beforeEach(() => {
  store = getInMemoryEventStore();
});
afterEach(async () => {
  await store.close();
});

const types = async (vmId: string) => (await store.readStream(relationshipStream(vmId))).map((e) => e.type);

describe("happy path: enable, initial replication, 5 cycles, retention 3", () => {
  it("records each step and keeps the newest 3 points, the oldest on the base image", async () => {
    const vm = "web1";
    const enabledResult = await executeCommand(store, vm, enabled);
    expect(enabledResult.newState).toMatchObject({ state: "ready-for-initial-replication", generation: 1, primaryIdentity: "agent.site-a.example" });
    expect(enabledResult.version).toBe(0n);

    expect((await executeCommand(store, vm, initialStarted)).newState.state).toBe("initial-replication-in-progress");
    const initial = await executeCommand(store, vm, initialCommitted);
    expect(initial.events.map((e) => e.type)).toEqual(["CycleCommitted", "RecoveryPointCreated", "InitialReplicationCompleted"]);
    expect(initial.newState.state).toBe("replicating");
    expect(initial.newState.points.map((p) => p.pointId)).toEqual(["rp-1"]);

    const mergedAfter: Record<number, string[]> = {};
    for (let seq = 2; seq <= 6; seq++) {
      const r = await executeCommand(store, vm, incremental(seq));
      expect(r.events.map((e) => e.type)).toEqual(["CycleCommitted", "RecoveryPointCreated"]);
      mergedAfter[seq] = await applyRetention(store, vm);
    }
    // Retention 3: nothing to merge until the 4th point exists, then one merge per new point.
    expect(mergedAfter).toEqual({ 2: [], 3: [], 4: ["rp-1"], 5: ["rp-2"], 6: ["rp-3"] });

    const { state, version } = await loadRelationship(store, vm);
    expect(state.state).toBe("replicating");
    expect(state.lastCycleSeq).toBe(6);
    expect(state.points.map((p) => [p.pointId, p.merging])).toEqual([
      ["rp-4", false],
      ["rp-5", false],
      ["rp-6", false],
    ]);
    // rp-4 became the base; the newer points keep their own overlays.
    expect(state.points[0]!.disks.map((d) => d.imagePath)).toEqual([baseImage(vm, "disk0"), baseImage(vm, "disk1")]);
    expect(state.points[2]!.disks.map((d) => d.imagePath)).toEqual([image(vm, "disk0", 6), image(vm, "disk1", 6)]);
    expect(state.points[1]!.consistency).toBe("crash");
    expect(state.points[2]!).toMatchObject({ cycleSeq: 6, cutoffAt: cutoff(6), consistency: "application" });
    expect(state.counters).toMatchObject({
      cyclesCommitted: 6,
      cyclesFailed: 0,
      mergesCompleted: 3,
      dataBytes: 21_000_000, // 1+2+..+6 MB
      wireBytes: 8_400_000,
    });
    expect(version).toBe(BigInt((await types(vm)).length - 1));

    expect(await types(vm)).toEqual([
      "ReplicationEnabled",
      "InitialReplicationStarted",
      "CycleCommitted",
      "RecoveryPointCreated",
      "InitialReplicationCompleted",
      "CycleCommitted",
      "RecoveryPointCreated",
      "CycleCommitted",
      "RecoveryPointCreated",
      "CycleCommitted",
      "RecoveryPointCreated",
      "RecoveryPointMergeStarted",
      "RecoveryPointMerged",
      "CycleCommitted",
      "RecoveryPointCreated",
      "RecoveryPointMergeStarted",
      "RecoveryPointMerged",
      "CycleCommitted",
      "RecoveryPointCreated",
      "RecoveryPointMergeStarted",
      "RecoveryPointMerged",
    ]);
    expect((await verifyLedger(store)).ok).toBe(true);
  });

  it("stores plain JSON: numbers for sizes and seqs, ISO strings for times", async () => {
    await protect(store, "db1", { lastSeq: 2 });
    const [committed] = (await store.readStream(relationshipStream("db1"))).filter((e) => e.type === "CycleCommitted");
    expect(committed!.data).toMatchObject({ cycleSeq: 1, kind: "full", generation: 1, cutoffAt: "2025-03-01T10:00:30.000Z" });
    expect(typeof (committed!.data as { disks: { sizeBytes: unknown }[] }).disks[0]!.sizeBytes).toBe("number");
  });
});

describe("merges", () => {
  it("does nothing (no events, no append) while within retention", async () => {
    await protect(store, "vm", { lastSeq: 3 });
    const before = await types("vm");
    const r = await executeCommand(store, "vm", startMerge);
    expect(r.events).toEqual([]);
    expect(await types("vm")).toEqual(before);
  });

  it("runs one merge at a time, lets cycles commit meanwhile, and checks the completion", async () => {
    await protect(store, "vm", { lastSeq: 4, retention: false });
    const started = await executeCommand(store, "vm", startMerge);
    expect(started.events).toEqual([{ type: "RecoveryPointMergeStarted", data: { pointId: "rp-1", intoPointId: "rp-2" } }]);
    expect(started.newState.points[0]!.merging).toBe(true);

    expect(await caught(() => executeCommand(store, "vm", startMerge))).toBeInstanceOf(MergeInProgressError);
    await executeCommand(store, "vm", incremental(5));
    expect(await caught(() => executeCommand(store, "vm", (s) => completeMerge(s, { pointId: "rp-2", disks: [] })))).toBeInstanceOf(NoSuchMergeError);
    const wrongDisks = await caught(() => executeCommand(store, "vm", (s) => completeMerge(s, { pointId: "rp-1", disks: [{ diskId: "disk0", imagePath: "/x" }] })));
    expect(wrongDisks).toBeInstanceOf(InvalidCommandInputError);

    const done = await executeCommand(store, "vm", (s) =>
      completeMerge(s, { pointId: "rp-1", disks: ["disk0", "disk1"].map((diskId) => ({ diskId, imagePath: baseImage("vm", diskId) })) }),
    );
    expect(done.newState.points.map((p) => p.pointId)).toEqual(["rp-2", "rp-3", "rp-4", "rp-5"]);
    expect(done.newState.points[0]!.disks[0]!.imagePath).toBe(baseImage("vm", "disk0"));
    expect(await applyRetention(store, "vm")).toEqual(["rp-2"]);
  });
});

describe("initial replication", () => {
  it("returns to ready-for-initial-replication when the full cycle fails, and can be started again", () => {
    let s = fold("vm", enabled, initialStarted);
    s = run(s, (x) => failCycle(x, { cycleSeq: 1, generation: 1, reason: "NBD_READ_FAILED", message: "EIO at offset 0" }));
    expect(s).toMatchObject({ state: "ready-for-initial-replication", lastCycleSeq: 1, inFlight: undefined });
    expect(s.lastFailure).toEqual({ cycleSeq: 1, reason: "NBD_READ_FAILED", message: "EIO at offset 0" });
    s = run(s, (x) => startInitialReplication(x, { cycleSeq: 2, cutoffAt: cutoff(2), generation: 1 }));
    s = run(s, (x) => commitCycle(x, cycleInput("vm", 2, "full")));
    expect(s.state).toBe("replicating");
    expect(s.points.map((p) => p.pointId)).toEqual(["rp-2"]);
    expect(s.counters).toMatchObject({ cyclesFailed: 1, cyclesCommitted: 1, consecutiveFailures: 0 });
  });

  it("refuses a point that does not hold every replicated disk", () => {
    const s = fold("vm", enabled, initialStarted);
    const input = cycleInput("vm", 1, "full");
    const missingDisk = () => commitCycle(s, { ...input, disks: input.disks.slice(0, 1) });
    expect(missingDisk).toThrow(InvalidCommandInputError);
    expect(missingDisk).toThrow(/Every point must hold every disk/);
  });

  it("refuses malformed input before looking at the state", () => {
    const s = fold("vm", enabled, initialStarted, initialCommitted);
    expect(() => commitCycle(s, cycleInput("vm", 2, "incremental", { dataBytes: 2 ** 60 }))).toThrow(InvalidCommandInputError);
    expect(() => commitCycle(s, cycleInput("vm", 2, "incremental", { cutoffAt: "yesterday" }))).toThrow(InvalidCommandInputError);
    expect(() => commitCycle(s, cycleInput("vm", 2, "incremental", { committedAt: cutoff(1) }))).toThrow(/before its cut-off/);
    expect(() => fold("vm", (x) => enableReplication(x, enableInput({ replicaSiteId: "site-a" })))).toThrow(/its own site/);
    expect(() => fold("vm", (x) => enableReplication(x, enableInput({ retention: { maxPoints: 0 } })))).toThrow(InvalidCommandInputError);
  });
});

describe("resynchronisation, pause and resume", () => {
  it("goes resync-required -> resynchronising -> replicating and keeps the earlier points", () => {
    let s = fold("vm", enabled, initialStarted, initialCommitted, incremental(2));
    s = run(s, (x) => markResyncRequired(x, { reason: "BITMAP_INCONSISTENT" }));
    expect(s).toMatchObject({ state: "resync-required", resyncReason: "BITMAP_INCONSISTENT" });
    // A second detector reporting the same loss records nothing.
    expect(markResyncRequired(s, { reason: "QEMU_RESTARTED" })).toEqual([]);
    s = run(s, (x) => startResync(x, { cycleSeq: 3, cutoffAt: cutoff(3), generation: 1 }));
    expect(s.state).toBe("resynchronising");
    const events = commitCycle(s, cycleInput("vm", 3, "resync"));
    expect(events.map((e) => e.type)).toEqual(["CycleCommitted", "RecoveryPointCreated", "ResyncCompleted"]);
    s = events.reduce(evolve, s);
    expect(s).toMatchObject({ state: "replicating", resyncReason: undefined, inFlight: undefined });
    expect(s.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-2", "rp-3"]);
  });

  it("a failed resync cycle needs another resync", () => {
    let s = fold("vm", enabled, initialStarted, initialCommitted);
    s = run(s, (x) => markResyncRequired(x, { reason: "BITMAP_MISSING" }));
    s = run(s, (x) => startResync(x, { cycleSeq: 2, cutoffAt: cutoff(2), generation: 1 }));
    s = run(s, (x) => failCycle(x, { cycleSeq: 2, generation: 1, reason: "TRANSPORT_CLOSED", message: "peer went away" }));
    expect(s.state).toBe("resync-required");
  });

  it("pauses and resumes; a cycle caught by the pause is recorded as failed", () => {
    let s = fold("vm", enabled, initialStarted, initialCommitted);
    s = run(s, (x) => pause(x, { reason: "maintenance window" }));
    expect(s).toMatchObject({ state: "paused", pauseReason: "maintenance window" });
    s = run(s, (x) => failCycle(x, { cycleSeq: 2, generation: 1, reason: "PAUSED", message: "refused while paused" }));
    s = run(s, resume);
    expect(s).toMatchObject({ state: "replicating", pauseReason: undefined, lastCycleSeq: 2 });
    s = run(s, incremental(3));
    expect(s.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-3"]);
  });
});
