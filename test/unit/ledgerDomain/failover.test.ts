/** Planned and unplanned failover, the generation bump, cancel and resume, completion, reverse. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  InvalidCommandInputError,
  InvalidTransitionError,
  MergeInProgressError,
  PlannedFailoverNotReadyError,
  RecoveryPointUnavailableError,
  RecoveryPointsProjection,
  StaleGenerationError,
  StatusProjection,
  UnexpectedGenerationError,
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
  getSqliteEventStore,
  loadRelationship,
  markResyncRequired,
  pause,
  prepareFailover,
  refuseStaleGeneration,
  relationshipStream,
  resume,
  startInitialReplication,
  startMerge,
  startResync,
  startReverseReplication,
  verifyLedger,
  type Decide,
  type EventStore,
  type RelationshipState,
} from "../../../src/ledger/index.js";
import {
  baseImage,
  caught,
  committed,
  cutoff,
  cycleInput,
  enableInput,
  enabled,
  failedOverUnplanned,
  fold,
  image,
  incremental,
  initialCommitted,
  initialStarted,
  protect,
  racing,
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
const OLD_PRIMARY = "agent.site-a.example";
const NEW_PRIMARY = "agent.site-b.example";
const upTo = (n: number): Decide[] => [enabled, initialStarted, initialCommitted, ...Array.from({ length: n - 1 }, (_, i) => incremental(i + 2))];
/** The primary VM stopped 5 s before cycle `seq` was cut: that cycle is the final one. */
const stoppedBefore = (seq: number): string => new Date(Date.parse(cutoff(seq)) - 5_000).toISOString();
const prepared =
  (finalSeq: number): Decide =>
  (s) =>
    prepareFailover(s, { preparedAt: committed(finalSeq - 1), primaryStoppedAt: stoppedBefore(finalSeq) });
const planned: Decide = (s) => failover(s, { kind: "planned" });
const cycleIn =
  (seq: number, generation: number): Decide =>
  (s) =>
    commitCycle(s, cycleInput(VM, seq, "incremental", { generation }));
const ack =
  (presentedGeneration: number, peerIdentity = OLD_PRIMARY): Decide =>
  (s) =>
    acknowledgeGeneration(s, { presentedGeneration, peerIdentity });
const reverse: Decide = (s) => startReverseReplication(s, { newPrimarySiteId: "site-b", newPrimaryIdentity: NEW_PRIMARY });

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error("expected an error, none was thrown");
}

describe("planned failover", () => {
  it("prepares, takes the stopped primary's final cycle, then fails over to it with generation + 1", async () => {
    await protect(store, VM, { lastSeq: 3 });
    const prep = await executeCommand(store, VM, prepared(4));
    expect(prep.events).toEqual([{ type: "FailoverPrepared", data: { cycleSeq: 3, preparedAt: committed(3), primaryStoppedAt: stoppedBefore(4) } }]);
    expect(prep.newState).toMatchObject({ state: "prepared-for-planned-failover", generation: 1 });
    expect(prep.newState.failover).toMatchObject({ kind: "planned", pointId: undefined, previousState: "replicating" });

    // Before the final cycle, a planned failover would lose the writes after rp-3's cut-off.
    const early = await caught(() => executeCommand(store, VM, planned));
    expect(early).toBeInstanceOf(PlannedFailoverNotReadyError);
    expect((early as Error).message).toBe(
      `VM web1: the primary VM stopped at ${stoppedBefore(4)} but the latest recovery point rp-3 was cut at ${cutoff(3)}, ` +
        `so the primary's final cycle has not been committed yet and a planned failover would lose data. Wait for the final ` +
        `cycle; or cancel the planned failover; or fail over unplanned, accepting the loss of the changes after the chosen point.`,
    );

    // The final incremental cycle is still accepted in prepared-for-planned-failover.
    const final = await executeCommand(store, VM, incremental(4));
    expect(final.newState.state).toBe("prepared-for-planned-failover");
    expect(final.newState.points.at(-1)!.pointId).toBe("rp-4");

    const fo = await executeCommand(store, VM, (s) => failover(s, { kind: "planned", newGeneration: 2 }));
    expect(fo.events).toEqual([{ type: "FailedOver", data: { pointId: "rp-4", generation: 2, kind: "planned", cutoffAt: cutoff(4), primaryGeneration: 1 } }]);
    expect(fo.newState).toMatchObject({ state: "failed-over-waiting-completion", generation: 2 });
    expect(fo.newState.failover).toMatchObject({ kind: "planned", pointId: "rp-4", previousState: "replicating", primaryGeneration: 1 });
    expect(fo.newState.counters.failovers).toBe(1);
  });

  it("always uses the latest point", () => {
    const s = fold(VM, ...upTo(3), prepared(4), incremental(4));
    expect(() => failover(s, { kind: "planned", pointId: "rp-3" })).toThrow(InvalidCommandInputError);
    expect(() => failover(s, { kind: "planned", pointId: "rp-3" })).toThrow(/uses the latest point rp-4 \(no data loss\)/);
    expect(failover(s, { kind: "planned", pointId: "rp-4" })).toMatchObject([{ data: { pointId: "rp-4" } }]);
  });

  it("a failed cycle while prepared is recorded; the next one is the final", () => {
    let s = fold(VM, ...upTo(3), prepared(4));
    s = run(s, (x) => failCycle(x, { cycleSeq: 4, generation: 1, reason: "TRANSPORT_CLOSED", message: "reset" }));
    expect(s.state).toBe("prepared-for-planned-failover");
    expect(() => planned(s)).toThrow(PlannedFailoverNotReadyError);
    s = run(s, incremental(5));
    expect(planned(s)).toMatchObject([{ data: { pointId: "rp-5", generation: 2 } }]);
  });

  it("gives up on the final cycle: an unplanned failover from prepared", () => {
    const s = fold(VM, ...upTo(3), prepared(4));
    const after = run(s, failedOverUnplanned("rp-2"));
    expect(after).toMatchObject({ state: "failed-over-waiting-completion", generation: 2 });
    expect(after.failover).toMatchObject({ kind: "unplanned", pointId: "rp-2", previousState: "replicating" });
  });
});

describe("unplanned failover", () => {
  it.each<[string, Decide[]]>([
    ["replicating", []],
    ["paused", [(s) => pause(s, { reason: "WAN down" })]],
    ["resync-required", [(s) => markResyncRequired(s, { reason: "BITMAP_INCONSISTENT" })]],
  ])("from %s, to the latest point by default; cancel returns there", (from, steps) => {
    const s = fold(VM, ...upTo(3), ...steps);
    expect(s.state).toBe(from);
    const events = failover(s, { kind: "unplanned" });
    expect(events).toEqual([{ type: "FailedOver", data: { pointId: "rp-3", generation: 2, kind: "unplanned", cutoffAt: cutoff(3), primaryGeneration: 1 } }]);
    const after = run(s, () => events);
    expect(after.failover?.previousState).toBe(from);
    expect(run(after, cancelFailover).state).toBe(from);
  });

  it("from resynchronising: abandons the resync cycle, and a cancel asks for the resync again", () => {
    const s = fold(
      VM,
      ...upTo(3),
      (x) => markResyncRequired(x, { reason: "QEMU_RESTARTED" }),
      (x) => startResync(x, { cycleSeq: 4, cutoffAt: cutoff(4), generation: 1 }),
    );
    const after = run(s, failedOverUnplanned());
    expect(after).toMatchObject({ state: "failed-over-waiting-completion", inFlight: undefined });
    expect(after.failover?.previousState).toBe("resync-required");
    // The abandoned resync cycle can no longer commit: its generation is stale now.
    expect(() => commitCycle(after, cycleInput(VM, 4, "resync"))).toThrow(StaleGenerationError);
    const back = run(after, cancelFailover);
    expect(back.state).toBe("resync-required");
    expect(back.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-2", "rp-3"]);
  });

  it("picks any retained point that is not being merged away", () => {
    const s = fold(VM, ...upTo(4), startMerge); // retention 3: rp-1 merges into rp-2
    expect(failover(s, { kind: "unplanned", pointId: "rp-2" })).toMatchObject([{ data: { pointId: "rp-2", cutoffAt: cutoff(2) } }]);
    const merging = thrown(() => failover(s, { kind: "unplanned", pointId: "rp-1" }));
    expect(merging).toBeInstanceOf(RecoveryPointUnavailableError);
    expect(merging).toMatchObject({ why: "merging", availablePointIds: ["rp-2", "rp-3", "rp-4"] });
    expect(() => failover(s, { kind: "unplanned", pointId: "rp-7" })).toThrow(
      "VM web1 has no recovery point rp-7 (never created, or merged away by retention). Available points: rp-2, rp-3, rp-4 (the last is the latest).",
    );
  });

  it("refuses a stated generation other than the current + 1, and malformed input", () => {
    const s = fold(VM, ...upTo(2));
    const err = thrown(() => failover(s, { kind: "unplanned", newGeneration: 3 }));
    expect(err).toBeInstanceOf(UnexpectedGenerationError);
    expect((err as Error).message).toMatch(/a failover now creates generation 2, not 3 \(generations go up by exactly 1 per failover\)/);
    expect(() => failover(s, { kind: "unplanned", newGeneration: 1 })).toThrow(InvalidCommandInputError);
    expect(() => failover(s, { kind: "sideways" as "planned" })).toThrow(InvalidCommandInputError);
    expect(() => failover(s, { kind: "unplanned", pointId: "" })).toThrow(InvalidCommandInputError);
  });

  it("two operators failing over at once: one wins, the other is refused, the generation goes up once", async () => {
    await protect(store, VM, { lastSeq: 3 });
    const race = racing(store, 2);
    const results = await Promise.allSettled([
      executeCommand(race, VM, (s) => failover(s, { kind: "unplanned", newGeneration: 2 })),
      executeCommand(race, VM, (s) => failover(s, { kind: "unplanned", pointId: "rp-2", newGeneration: 2 })),
    ]);
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    expect(results.find((r) => r.status === "rejected")).toMatchObject({ reason: expect.any(InvalidTransitionError) });
    const { state } = await loadRelationship(store, VM);
    expect(state).toMatchObject({ state: "failed-over-waiting-completion", generation: 2 });
  });
});

describe("the old primary after a failover", () => {
  it("is refused as stale on every data-plane command, and nothing is appended", async () => {
    await protect(store, VM, { lastSeq: 3 });
    await executeCommand(store, VM, failedOverUnplanned());
    const version = await store.streamVersion(relationshipStream(VM));

    const commit = await caught(() => executeCommand(store, VM, cycleIn(4, 1)));
    expect(commit).toBeInstanceOf(StaleGenerationError);
    expect(commit).toMatchObject({ presentedGeneration: 1, currentGeneration: 2 });
    expect((commit as Error).message).toMatch(/old primary .* must not resume the VM/);
    expect(await caught(() => executeCommand(store, VM, (s) => startInitialReplication(s, { cycleSeq: 9, cutoffAt: cutoff(9), generation: 1 })))).toBeInstanceOf(
      StaleGenerationError,
    );
    expect(await caught(() => executeCommand(store, VM, (s) => startResync(s, { cycleSeq: 9, cutoffAt: cutoff(9), generation: 1 })))).toBeInstanceOf(StaleGenerationError);
    expect(await caught(() => executeCommand(store, VM, (s) => failCycle(s, { cycleSeq: 4, generation: 1, reason: "X", message: "" })))).toBeInstanceOf(StaleGenerationError);
    // Without a cancel, there is no handover: its Hello is stale too.
    expect(await caught(() => executeCommand(store, VM, ack(1)))).toBeInstanceOf(StaleGenerationError);
    expect(await store.streamVersion(relationshipStream(VM))).toBe(version);

    // In the new generation, the cycle is refused by state: this site is not a replica now.
    expect(await caught(() => executeCommand(store, VM, cycleIn(4, 2)))).toBeInstanceOf(InvalidTransitionError);
    const audit = await executeCommand(store, VM, (s) => refuseStaleGeneration(s, { presentedGeneration: 1, peerIdentity: OLD_PRIMARY }));
    expect(audit.newState.counters.staleGenerationRefusals).toBe(1);
  });
});

describe("cancel, then resume replication", () => {
  it("returns to replicating with every point; the old primary is told the new generation once and goes on", async () => {
    await protect(store, VM, { lastSeq: 3 });
    const before = (await loadRelationship(store, VM)).state;
    await executeCommand(store, VM, failedOverUnplanned("rp-2"));

    const cancelled = await executeCommand(store, VM, cancelFailover);
    expect(cancelled.events).toEqual([{ type: "FailoverCancelled", data: { returnedTo: "replicating", generation: 2, primaryGeneration: 1 } }]);
    expect(cancelled.newState).toMatchObject({ state: "replicating", generation: 2, failover: undefined });
    expect(cancelled.newState.points).toEqual(before.points);
    expect(cancelled.newState.generationHandover).toEqual({ peerIdentity: OLD_PRIMARY, fromGeneration: 1 });
    expect(cancelled.newState.counters.failoversCancelled).toBe(1);

    // Cycles are never accepted in the old generation, only the Hello that learns the new one.
    expect(await caught(() => executeCommand(store, VM, cycleIn(4, 1)))).toBeInstanceOf(StaleGenerationError);
    const hello = await executeCommand(store, VM, ack(1));
    expect(hello.events).toEqual([{ type: "GenerationAcknowledged", data: { peerIdentity: OLD_PRIMARY, presentedGeneration: 1, generation: 2 } }]);
    // The agent lost the HelloAck and asks again: still accepted, still recorded.
    expect((await executeCommand(store, VM, ack(1))).events).toHaveLength(1);
    // Another identity presenting the old generation is refused.
    expect(await caught(() => executeCommand(store, VM, ack(1, "agent.elsewhere.example")))).toBeInstanceOf(StaleGenerationError);
    // Presenting the current one needs nothing.
    expect((await executeCommand(store, VM, ack(2))).events).toEqual([]);

    // The agent adopts generation 2: its next cycle (its bitmap holds everything since rp-3) commits.
    const resumed = await executeCommand(store, VM, cycleIn(4, 2));
    expect(resumed.newState).toMatchObject({ state: "replicating", generation: 2, generationHandover: undefined });
    expect(resumed.newState.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-2", "rp-3", "rp-4"]);
    // Adopted: the handover is closed for good.
    const late = await caught(() => executeCommand(store, VM, ack(1)));
    expect(late).toBeInstanceOf(StaleGenerationError);
  });

  it("after a failover, a cancel, a failover and a cancel, the primary may still present the first generation", () => {
    let s = fold(VM, ...upTo(2), failedOverUnplanned(), cancelFailover, failedOverUnplanned(), cancelFailover);
    expect(s).toMatchObject({ state: "replicating", generation: 3, generationHandover: { fromGeneration: 1 } });
    expect(ack(1)(s)).toMatchObject([{ data: { presentedGeneration: 1, generation: 3 } }]);
    expect(ack(2)(s)).toMatchObject([{ data: { presentedGeneration: 2, generation: 3 } }]);
    expect(() => ack(4)(s)).toThrow(StaleGenerationError);
    s = run(s, cycleIn(3, 3));
    expect(() => ack(2)(s)).toThrow(StaleGenerationError);
    // And the next failover goes from 3 to 4, never back.
    expect(failover(s, { kind: "unplanned" })).toMatchObject([{ data: { generation: 4, primaryGeneration: 3 } }]);
  });

  it("a new failover closes the handover of the previous cancel", () => {
    const s = fold(VM, ...upTo(2), failedOverUnplanned(), cancelFailover, failedOverUnplanned());
    expect(s).toMatchObject({ generation: 3, generationHandover: undefined });
    expect(() => ack(1)(s)).toThrow(StaleGenerationError);
    expect(s.failover?.primaryGeneration).toBe(1);
  });

  it("cancelling a prepared planned failover changes no generation and needs no handover", () => {
    const s = fold(VM, ...upTo(3), prepared(4), incremental(4), cancelFailover);
    expect(s).toMatchObject({ state: "replicating", generation: 1, generationHandover: undefined, failover: undefined });
    expect(run(s, cycleIn(5, 1)).points.at(-1)!.pointId).toBe("rp-5");
  });

  it("cancelling a failover made from a prepared planned failover returns to replicating", () => {
    const s = fold(VM, ...upTo(3), prepared(4), incremental(4), planned, cancelFailover);
    expect(s).toMatchObject({ state: "replicating", generation: 2, generationHandover: { fromGeneration: 1 } });
  });

  it("after a cancel from paused, the primary resumes once the operator resumes", () => {
    let s = fold(VM, ...upTo(2), (x) => pause(x, { reason: "WAN" }), failedOverUnplanned(), cancelFailover);
    expect(s.state).toBe("paused");
    expect(ack(1)(s)).toHaveLength(1);
    s = run(s, resume);
    s = run(s, cycleIn(3, 2));
    expect(s.generationHandover).toBeUndefined();
  });
});

describe("completeFailover", () => {
  it("keeps the failed-over point's chain, drops every other point and releases the newer images", async () => {
    await protect(store, VM, { lastSeq: 5, maxPoints: 5 });
    await executeCommand(store, VM, failedOverUnplanned("rp-3"));
    const done = await executeCommand(store, VM, completeFailover);
    const disks = ["disk0", "disk1"];
    expect(done.events).toEqual([
      {
        type: "FailoverCompleted",
        data: {
          pointId: "rp-3",
          droppedPointIds: ["rp-1", "rp-2", "rp-4", "rp-5"],
          keptChains: disks.map((d) => ({ diskId: d, chain: [baseImage(VM, d), image(VM, d, 2), image(VM, d, 3)] })),
          releasedImages: [4, 5].flatMap((seq) => disks.map((d) => ({ diskId: d, imagePath: image(VM, d, seq) }))),
        },
      },
    ]);
    expect(done.newState).toMatchObject({ state: "failed-over", generation: 2, points: [] });
    expect(done.newState.failover).toMatchObject({ kind: "unplanned", pointId: "rp-3" });
    // No retention any more, and no way back.
    expect(await caught(() => executeCommand(store, VM, startMerge))).toBeInstanceOf(InvalidTransitionError);
    expect(await caught(() => executeCommand(store, VM, cancelFailover))).toBeInstanceOf(InvalidTransitionError);
  });

  it("waits for a merge that was running at the failover to be recorded", () => {
    let s = fold(VM, ...upTo(4), startMerge); // rp-1 merging into rp-2
    s = run(s, failedOverUnplanned());
    const err = thrown(() => completeFailover(s));
    expect(err).toBeInstanceOf(MergeInProgressError);
    expect((err as Error).message).toMatch(/Finish it \(completeMerge\) before completing the failover/);
    s = run(s, (x) => completeMerge(x, { pointId: "rp-1", disks: ["disk0", "disk1"].map((diskId) => ({ diskId, imagePath: baseImage(VM, diskId) })) }));
    expect(completeFailover(s)).toMatchObject([{ data: { pointId: "rp-4", droppedPointIds: ["rp-2", "rp-3"], releasedImages: [] } }]);
  });
});

describe("reverse replication", () => {
  it("after completion, records this site as the primary at the failover's generation", async () => {
    await protect(store, VM, { lastSeq: 3 });
    await executeCommand(store, VM, failedOverUnplanned());
    await executeCommand(store, VM, completeFailover);
    const r = await executeCommand(store, VM, reverse);
    expect(r.events).toEqual([
      {
        type: "ReverseReplicationStarted",
        data: { newPrimarySiteId: "site-b", newPrimaryIdentity: NEW_PRIMARY, newReplicaSiteId: "site-a", generation: 2 },
      },
    ]);
    expect(r.newState).toMatchObject({
      state: "ready-for-initial-replication",
      generation: 2,
      primarySiteId: "site-b",
      replicaSiteId: "site-a",
      primaryIdentity: NEW_PRIMARY,
      points: [],
      failover: undefined,
    });
    // The old primary's agent is nobody here any more.
    expect(await caught(() => executeCommand(store, VM, ack(1)))).toBeInstanceOf(StaleGenerationError);
    expect(await caught(() => executeCommand(store, VM, (s) => startInitialReplication(s, { cycleSeq: 9, cutoffAt: cutoff(9), generation: 1 })))).toBeInstanceOf(
      StaleGenerationError,
    );
  });

  it("straight after a planned failover, completing it in the same append", () => {
    const s = fold(VM, ...upTo(3), prepared(4), incremental(4), planned);
    const events = reverse(s);
    expect(events.map((e) => e.type)).toEqual(["FailoverCompleted", "ReverseReplicationStarted"]);
    expect(events[0]).toMatchObject({ data: { pointId: "rp-4", droppedPointIds: ["rp-1", "rp-2", "rp-3"] } });
    expect(run(s, () => events)).toMatchObject({ state: "ready-for-initial-replication", primarySiteId: "site-b", generation: 2 });
  });

  it("refuses the wrong site or the old primary's identity as the new primary", () => {
    const s = fold(VM, ...upTo(2), failedOverUnplanned(), completeFailover);
    expect(() => startReverseReplication(s, { newPrimarySiteId: "site-a", newPrimaryIdentity: NEW_PRIMARY })).toThrow(
      /was failed over to site site-b, which becomes the primary, not site-a/,
    );
    expect(() => startReverseReplication(s, { newPrimarySiteId: "site-b", newPrimaryIdentity: OLD_PRIMARY })).toThrow(InvalidCommandInputError);
  });

  it("the other site's ledger holds the reverse direction, enabled at the new generation", async () => {
    // Site B (this ledger): fail over, complete, reverse.
    await protect(store, VM, { lastSeq: 3 });
    await executeCommand(store, VM, failedOverUnplanned());
    await executeCommand(store, VM, completeFailover);
    const reversed = (await executeCommand(store, VM, reverse)).events.at(-1)!;
    expect(reversed.type).toBe("ReverseReplicationStarted");
    const generation = reversed.type === "ReverseReplicationStarted" ? reversed.data.generation : 0;

    // Site A's ledger: a new relationship, B primary, at that generation.
    const siteA = getInMemoryEventStore();
    try {
      const enabledA = await executeCommand(siteA, VM, (s) =>
        enableReplication(s, enableInput({ primarySiteId: "site-b", replicaSiteId: "site-a", primaryIdentity: NEW_PRIMARY, generation })),
      );
      expect(enabledA.newState).toMatchObject({ state: "ready-for-initial-replication", generation: 2, primaryIdentity: NEW_PRIMARY });
      // A's own old agent, still at generation 1, cannot replicate into it.
      const stale = await caught(() => executeCommand(siteA, VM, (s) => startInitialReplication(s, { cycleSeq: 1, cutoffAt: cutoff(10), generation: 1 })));
      expect(stale).toBeInstanceOf(StaleGenerationError);
      // B's agent, presenting generation 2, protects the VM again.
      await executeCommand(siteA, VM, (s) => startInitialReplication(s, { cycleSeq: 1, cutoffAt: cutoff(10), generation: 2 }));
      const full = await executeCommand(siteA, VM, (s) => commitCycle(s, cycleInput(VM, 1, "full", { generation: 2, cutoffAt: cutoff(10), committedAt: committed(10) })));
      expect(full.newState).toMatchObject({ state: "replicating", generation: 2 });
      // The next failover there (a failback) creates generation 3.
      expect(failover(full.newState, { kind: "unplanned" })).toMatchObject([{ data: { generation: 3 } }]);
    } finally {
      await siteA.close();
    }
  });
});

describe("projections of failover", () => {
  async function scenario(s: EventStore): Promise<RelationshipState[]> {
    const states: RelationshipState[] = [];
    const at = async () => states.push((await loadRelationship(s, VM)).state);
    await protect(s, VM, { lastSeq: 3 });
    await protect(s, "db1", { lastSeq: 2 });
    await executeCommand(s, VM, prepared(4));
    await at();
    await executeCommand(s, VM, incremental(4));
    await executeCommand(s, VM, planned);
    await at();
    await executeCommand(s, "db1", failedOverUnplanned("rp-1"));
    await executeCommand(s, "db1", cancelFailover);
    await executeCommand(s, "db1", ack(1));
    await executeCommand(s, VM, completeFailover);
    await at();
    return states;
  }

  it("status and catalogue show the failover state, the same after a rebuild from scratch", async () => {
    const live = new StatusProjection();
    const liveCatalogue = new RecoveryPointsProjection(VM);
    const sub = store.subscribe({ streamPrefix: "replication-" }, (e) => {
      live.apply(e);
      liveCatalogue.apply(e);
    });
    try {
      await scenario(store);
      const now = new Date(cutoff(5));
      const rebuilt = await StatusProjection.rebuild(store);
      expect(rebuilt.get(VM, now)).toMatchObject({
        state: "failed-over",
        generation: 2,
        recoveryPoints: 0,
        failover: { kind: "planned", pointId: "rp-4", primaryStoppedAt: stoppedBefore(4) },
      });
      expect(rebuilt.get("db1", now)).toMatchObject({ state: "replicating", generation: 2, recoveryPoints: 2, failover: undefined });

      const last = (await store.readAll({ fromPosition: 0n })).at(-1)!;
      await waitFor(() => live.checkpoint === last.globalPosition, "live status to catch up");
      expect(live.list(now)).toEqual(rebuilt.list(now));
      const catalogue = await RecoveryPointsProjection.rebuild(store, VM);
      expect(catalogue.list()).toEqual([]);
      expect(catalogue.failedOverPointId).toBe("rp-4");
      expect(liveCatalogue.list()).toEqual(catalogue.list());
    } finally {
      await sub.close();
    }
  });

  it("marks the failed-over point in the catalogue until the failover is cancelled", async () => {
    await protect(store, VM, { lastSeq: 3 });
    await executeCommand(store, VM, failedOverUnplanned("rp-2"));
    const during = await RecoveryPointsProjection.rebuild(store, VM);
    expect(during.list().map((p) => [p.pointId, p.failedOver])).toEqual([
      ["rp-1", false],
      ["rp-2", true],
      ["rp-3", false],
    ]);
    expect((await StatusProjection.rebuild(store)).get(VM, new Date(cutoff(4)))).toMatchObject({
      state: "failed-over-waiting-completion",
      generation: 2,
      failover: { kind: "unplanned", pointId: "rp-2", primaryStoppedAt: undefined },
    });
    await executeCommand(store, VM, cancelFailover);
    const after = await RecoveryPointsProjection.rebuild(store, VM);
    expect(after.list().some((p) => p.failedOver)).toBe(false);
    expect(after.failedOverPointId).toBeUndefined();
  });
});

describe("failover on the SQLite ledger", () => {
  const dir = mkdtempSync(join(tmpdir(), "qreplica-failover-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("test, planned failover, cancel and resume, failover again, complete, reverse: survives a reopen and verifies", async () => {
    const path = join(dir, "failover.db");
    const sqlite = getSqliteEventStore({ path });
    const now = new Date(cutoff(9));
    let before: RelationshipState;
    let statusBefore: unknown;
    try {
      await protect(sqlite, VM, { lastSeq: 3 });
      await executeCommand(sqlite, VM, testStarted("drill", "rp-2"));
      await executeCommand(sqlite, VM, prepared(4));
      await executeCommand(sqlite, VM, incremental(4));
      await executeCommand(sqlite, VM, planned);
      await executeCommand(sqlite, VM, cancelFailover);
      await executeCommand(sqlite, VM, ack(1));
      await executeCommand(sqlite, VM, cycleIn(5, 2));
      await executeCommand(sqlite, VM, (s) => failover(s, { kind: "unplanned", pointId: "rp-4", newGeneration: 3 }));
      await executeCommand(sqlite, VM, testStopped("drill"));
      await executeCommand(sqlite, VM, completeFailover);
      await executeCommand(sqlite, VM, reverse);
      before = (await loadRelationship(sqlite, VM)).state;
      statusBefore = (await StatusProjection.rebuild(sqlite)).get(VM, now);
      expect(before).toMatchObject({ state: "ready-for-initial-replication", generation: 3, primarySiteId: "site-b", replicaSiteId: "site-a" });
      expect(before.counters).toMatchObject({ failovers: 2, failoversCancelled: 1, testFailoversStarted: 1 });
    } finally {
      await sqlite.close();
    }

    const reopened = getSqliteEventStore({ path });
    try {
      expect((await loadRelationship(reopened, VM)).state).toEqual(before);
      expect((await StatusProjection.rebuild(reopened)).get(VM, now)).toEqual(statusBefore);
      expect((await reopened.readStream(relationshipStream(VM))).map((e) => e.type).filter((t) => !t.startsWith("Cycle") && t !== "RecoveryPointCreated")).toEqual([
        "ReplicationEnabled",
        "InitialReplicationStarted",
        "InitialReplicationCompleted",
        "TestFailoverStarted",
        "FailoverPrepared",
        "FailedOver",
        "FailoverCancelled",
        "GenerationAcknowledged",
        "FailedOver",
        "TestFailoverStopped",
        "FailoverCompleted",
        "ReverseReplicationStarted",
      ]);
      expect((await verifyLedger(reopened)).ok).toBe(true);
    } finally {
      await reopened.close();
    }
  });
});
