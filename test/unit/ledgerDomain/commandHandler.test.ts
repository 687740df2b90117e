import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  InvalidTransitionError,
  OutOfOrderCycleError,
  UnknownRelationshipEventError,
  WrongExpectedVersionError,
  executeCommand,
  getInMemoryEventStore,
  loadRelationship,
  pause,
  relationshipStream,
  startMerge,
  type CommandResult,
  type Decide,
  type EventStore,
  type RelationshipEvent,
} from "../../../src/ledger/index.js";
import { caught, enabled, incremental, protect, racing } from "./fixtures.js";

let store: EventStore;
beforeEach(() => {
  store = getInMemoryEventStore();
});
afterEach(async () => {
  await store.close();
});

const settle = (...ps: Promise<CommandResult>[]) => Promise.allSettled(ps);

describe("executeCommand under concurrency", () => {
  it("retries the loser and appends both when the decisions are compatible", async () => {
    await protect(store, "vm", { lastSeq: 4, retention: false }); // 4 points, retention 3: a merge is due
    const race = racing(store, 2);
    const [merge, commit] = await Promise.all([executeCommand(race, "vm", startMerge), executeCommand(race, "vm", incremental(5))]);

    expect([merge.attempts, commit.attempts].sort()).toEqual([1, 2]);
    expect(merge.events.map((e) => e.type)).toEqual(["RecoveryPointMergeStarted"]);
    expect(commit.events.map((e) => e.type)).toEqual(["CycleCommitted", "RecoveryPointCreated"]);
    const { state } = await loadRelationship(store, "vm");
    expect(state.points.map((p) => [p.pointId, p.merging])).toEqual([
      ["rp-1", true],
      ["rp-2", false],
      ["rp-3", false],
      ["rp-4", false],
      ["rp-5", false],
    ]);
    // Whoever appended last returned the state that includes the other's events.
    const last = merge.attempts === 2 ? merge : commit;
    expect(last.newState).toEqual(state);
  });

  it("lets exactly one of two conflicting operators win; the other gets the command's refusal", async () => {
    await protect(store, "vm", { lastSeq: 2 });
    const race = racing(store, 2);
    const results = await settle(
      executeCommand(race, "vm", (s) => pause(s, { reason: "alice: storage maintenance" })),
      executeCommand(race, "vm", (s) => pause(s, { reason: "bob: network change" })),
    );
    const won = results.filter((r) => r.status === "fulfilled");
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    expect(won).toHaveLength(1);
    expect(lost).toHaveLength(1);
    expect(lost[0]!.reason).toBeInstanceOf(InvalidTransitionError);
    expect((lost[0]!.reason as Error).message).toMatch(/VM vm is in state paused; pause needs replicating\. VM vm is already paused/);
    const paused = (await store.readStream(relationshipStream("vm"))).filter((e) => e.type === "ReplicationPaused");
    expect(paused).toHaveLength(1);
  });

  it("records a cycle delivered twice at the same moment exactly once", async () => {
    await protect(store, "vm", { lastSeq: 2 });
    const race = racing(store, 2);
    const results = await settle(executeCommand(race, "vm", incremental(3)), executeCommand(race, "vm", incremental(3)));
    expect(results.map((r) => r.status).sort()).toEqual(["fulfilled", "rejected"]);
    expect(results.find((r) => r.status === "rejected")).toMatchObject({ reason: expect.any(OutOfOrderCycleError) });
    expect((await loadRelationship(store, "vm")).state.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-2", "rp-3"]);
  });

  it("creates the stream exactly once when two enables race", async () => {
    const race = racing(store, 2);
    const results = await settle(executeCommand(race, "new-vm", enabled), executeCommand(race, "new-vm", enabled));
    expect(results.map((r) => r.status).sort()).toEqual(["fulfilled", "rejected"]);
    expect(await store.streamVersion(relationshipStream("new-vm"))).toBe(0n);
  });

  it("gives up after maxRetries with the store's conflict error", async () => {
    await protect(store, "vm", { lastSeq: 4, retention: false });
    const race = racing(store, 2);
    const results = await settle(executeCommand(race, "vm", startMerge, { maxRetries: 0 }), executeCommand(race, "vm", incremental(5), { maxRetries: 0 }));
    expect(results.filter((r) => r.status === "rejected").map((r) => (r as PromiseRejectedResult).reason)).toEqual([expect.any(WrongExpectedVersionError)]);
  });
});

describe("executeCommand and loadRelationship", () => {
  it("attaches metadata to every appended event", async () => {
    await executeCommand(store, "vm", enabled, { metadata: { actor: "alice", correlationId: "c-1" } });
    const [e] = await store.readStream(relationshipStream("vm"));
    expect(e!.metadata).toEqual({ actor: "alice", correlationId: "c-1" });
  });

  it("refuses to append an event type the domain does not know, before touching the ledger", async () => {
    const bogus = (() => [{ type: "Teleported", data: {} }] as unknown as RelationshipEvent[]) satisfies Decide;
    expect(await caught(() => executeCommand(store, "vm", bogus))).toBeInstanceOf(UnknownRelationshipEventError);
    expect(await store.streamVersion(relationshipStream("vm"))).toBeUndefined();
  });

  it("refuses to fold a stream holding an event it does not know", async () => {
    await store.append(relationshipStream("vm"), [{ type: "ReplicationTeleported", data: {} }], "no_stream");
    const err = await caught(() => loadRelationship(store, "vm"));
    expect(err).toBeInstanceOf(UnknownRelationshipEventError);
    expect((err as Error).message).toMatch(/upgrade/);
  });

  it("continues an earlier fold with only the new events", async () => {
    await protect(store, "vm", { lastSeq: 3 });
    const earlier = await loadRelationship(store, "vm");
    await executeCommand(store, "vm", incremental(4));
    const continued = await loadRelationship(store, "vm", earlier);
    expect(continued).toEqual(await loadRelationship(store, "vm"));
    expect(continued.version).toBe(earlier.version! + 2n);
  });
});
