import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  InvalidTransitionError,
  RELATIONSHIP_FOLD_VERSION,
  RELATIONSHIP_SNAPSHOT_EVERY,
  decodeRelationshipEvent,
  executeCommand,
  foldRelationship,
  getInMemoryEventStore,
  loadRelationship,
  onRelationshipSnapshotIgnored,
  pause,
  relationshipStream,
  resume,
  sealSnapshot,
  snapshotKeyOf,
  type EventStore,
  type RelationshipState,
  type SnapshotProblem,
} from "../../../src/ledger/index.js";
import { appendHistory, relationshipHistory } from "../../helpers/ledgerHistory.js";
import { raceBarrier } from "../ledgerDomain/fixtures.js";
import { counting } from "./counting.js";

const VM = "web1";
const EVENTS = 5000;

let store: EventStore;
let ignored: SnapshotProblem[];
let unwatch: () => void;
beforeEach(async () => {
  store = getInMemoryEventStore();
  await appendHistory(store, VM, relationshipHistory(VM, EVENTS).events);
  ignored = [];
  unwatch = onRelationshipSnapshotIgnored((p) => ignored.push(p));
});
afterEach(async () => {
  unwatch();
  await store.close();
});

async function fullFold(s: EventStore = store): Promise<RelationshipState> {
  return foldRelationship(VM, (await s.readStream(relationshipStream(VM))).map(decodeRelationshipEvent));
}

describe("a relationship's fold does not grow with the stream's age", () => {
  it("folds once, snapshots, then reads only the tail for each command", async () => {
    const total = Number((await store.streamVersion(relationshipStream(VM)))! + 1n);
    expect(total).toBeGreaterThanOrEqual(EVENTS);
    const site = counting(store);
    const first = await loadRelationship(site, VM);
    expect(site.eventsRead).toBe(total); // no snapshot yet: the whole stream, once
    expect(first.state).toEqual(await fullFold());
    expect((await store.readSnapshot(snapshotKeyOf(VM)))?.at).toBe(first.version);

    site.reset();
    const paused = await executeCommand(site, VM, (s) => pause(s, { reason: "maintenance" }));
    expect(paused.events.map((e) => e.type)).toEqual(["ReplicationPaused"]);
    // The event the fold ends with (checked by hash) and nothing else.
    expect(site.eventsRead).toBe(1);
    site.reset();
    await executeCommand(site, VM, (s) => resume(s));
    expect(site.eventsRead).toBe(2); // the anchor and the pause appended since
    expect((await loadRelationship(site, VM)).state).toEqual(await fullFold());
  });

  it("after a restart starts from the snapshot: the events read are the snapshot's anchor and the tail", async () => {
    await loadRelationship(store, VM); // writes the snapshot
    await executeCommand(store, VM, (s) => pause(s, { reason: "maintenance" }));
    await executeCommand(store, VM, (s) => resume(s));
    const restarted = counting(store);
    const loaded = await loadRelationship(restarted, VM);
    expect(restarted.snapshotReads).toBe(1);
    expect(restarted.eventsRead).toBe(3);
    expect(loaded.state).toEqual(await fullFold());
    expect(loaded.version).toBe(await store.streamVersion(relationshipStream(VM)));
    expect(ignored).toEqual([]);
  });

  it("writes a new snapshot once a further SNAPSHOT_EVERY events were folded", async () => {
    const first = await loadRelationship(store, VM);
    await appendHistory(store, "other", relationshipHistory("other", 10).events);
    for (let i = 0; BigInt(i) < RELATIONSHIP_SNAPSHOT_EVERY / 2n; i++) {
      await executeCommand(store, VM, (s) => pause(s, { reason: `r${i}` }));
      await executeCommand(store, VM, (s) => resume(s));
    }
    const after = await loadRelationship(store, VM);
    expect(after.version).toBe(first.version! + RELATIONSHIP_SNAPSHOT_EVERY);
    expect((await store.readSnapshot(snapshotKeyOf(VM)))?.at).toBe(after.version);
  });

  describe("a snapshot is a cache, never trusted over the events", () => {
    async function restartedLoad(): Promise<{ state: RelationshipState; eventsRead: number }> {
      const s = counting(store);
      const { state } = await loadRelationship(s, VM);
      return { state, eventsRead: s.eventsRead };
    }

    it("ignores a damaged snapshot (contents edited, checksum stale), folds the events and replaces it", async () => {
      const { version } = await loadRelationship(store, VM);
      const good = (await store.readSnapshot(snapshotKeyOf(VM)))!;
      await store.writeSnapshot({ ...good, state: good.state.replace('"replicating"', '"paused"') });
      const r = await restartedLoad();
      expect(r.state).toEqual(await fullFold());
      expect(r.eventsRead).toBe(Number(version! + 1n)); // the whole stream, as without a snapshot
      expect(ignored.map((p) => p.reason)).toEqual([expect.stringMatching(/checksum/)]);
      expect((await store.readSnapshot(snapshotKeyOf(VM)))?.checksum).toBe(good.checksum);
    });

    it("ignores a snapshot of an older fold version, and one with the right checksum but a state of another VM", async () => {
      const { version, state } = await loadRelationship(store, VM);
      const head = (await store.readStream(relationshipStream(VM), { fromVersion: version! }))[0]!;
      await store.writeSnapshot(
        sealSnapshot({ key: snapshotKeyOf(VM), at: version!, atHash: head.hash, foldVersion: RELATIONSHIP_FOLD_VERSION - 1, state: { ...state, state: "paused" } }),
      );
      expect((await restartedLoad()).state).toEqual(await fullFold());
      await store.writeSnapshot(
        sealSnapshot({ key: snapshotKeyOf(VM), at: version!, atHash: head.hash, foldVersion: RELATIONSHIP_FOLD_VERSION, state: { ...state, vmId: "db1" } }),
      );
      expect((await restartedLoad()).state).toEqual(await fullFold());
      expect(ignored.map((p) => p.reason)).toEqual([
        expect.stringMatching(new RegExp(`fold version ${RELATIONSHIP_FOLD_VERSION - 1}`)),
        expect.stringMatching(/not a relationship state/),
      ]);
    });

    it("ignores a valid-looking snapshot whose anchor event is not the one in the stream", async () => {
      const { version, state } = await loadRelationship(store, VM);
      await store.writeSnapshot(
        sealSnapshot({ key: snapshotKeyOf(VM), at: version!, atHash: "f".repeat(64), foldVersion: RELATIONSHIP_FOLD_VERSION, state: { ...state, state: "paused" } }),
      );
      expect((await restartedLoad()).state).toEqual(await fullFold());
      await store.writeSnapshot(sealSnapshot({ key: snapshotKeyOf(VM), at: version! + 50n, atHash: "f".repeat(64), foldVersion: RELATIONSHIP_FOLD_VERSION, state }));
      expect((await restartedLoad()).state).toEqual(await fullFold());
      expect(ignored).toHaveLength(2);
    });
  });

  it("two writers racing (each starting from the snapshot) are still settled by the stream version", async () => {
    const barrier = raceBarrier(2);
    const a = barrier(counting(store));
    const b = barrier(counting(store));
    const results = await Promise.allSettled([executeCommand(a, VM, (s) => pause(s, { reason: "a" })), executeCommand(b, VM, (s) => pause(s, { reason: "b" }))]);
    const won = results.filter((r) => r.status === "fulfilled");
    const lost = results.filter((r) => r.status === "rejected");
    expect(won).toHaveLength(1);
    // The loser re-read the winner's event and decided again: already paused.
    expect(lost.map((r) => (r as PromiseRejectedResult).reason)).toEqual([expect.any(InvalidTransitionError)]);
    const events = await store.readStream(relationshipStream(VM), { fromVersion: (await store.streamVersion(relationshipStream(VM)))! - 1n });
    expect(events.map((e) => e.type)).toEqual([expect.not.stringMatching(/^ReplicationPaused$/), "ReplicationPaused"]);
  });
});
