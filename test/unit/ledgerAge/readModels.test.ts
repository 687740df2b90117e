import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  LedgerReadModels,
  READ_MODELS_SNAPSHOT_KEY,
  RecoveryPointsProjection,
  StatusProjection,
  commitCycle,
  decodeRelationshipEvent,
  executeCommand,
  failCycle,
  foldRelationship,
  getInMemoryEventStore,
  loadRelationship,
  markResyncRequired,
  pause,
  rebuildReadModels,
  relationshipStream,
  resume,
  sealSnapshot,
  snapshotKeyOf,
  startResync,
  type Decide,
  type EventStore,
} from "../../../src/ledger/index.js";
import { waitFor } from "../ledger/eventStoreContract.js";
import { applyRetention, cutoff, cycleInput, protect, testStarted, testStopped } from "../ledgerDomain/fixtures.js";
import { counting } from "./counting.js";

const VMS = ["web1", "db1", "app1"];
const NOW = new Date("2025-03-02T00:00:00Z");

/** Deterministic, so a failure can be replayed: mulberry32. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Runs `steps` random commands; refused ones (invalid in the state reached) are part of the game. */
async function randomCommands(store: EventStore, steps: number, seed: number): Promise<void> {
  const rnd = prng(seed);
  for (const vm of VMS) {
    if ((await loadRelationship(store, vm)).state.state === "not-enabled") await protect(store, vm, { lastSeq: 2, maxPoints: 3 });
  }
  for (let i = 0; i < steps; i++) {
    const vm = VMS[Math.floor(rnd() * VMS.length)]!;
    const { state } = await loadRelationship(store, vm);
    const seq = state.lastCycleSeq + 1;
    const choices: Decide[] = [
      (s) => commitCycle(s, cycleInput(vm, seq)),
      (s) => commitCycle(s, cycleInput(vm, seq)),
      (s) => failCycle(s, { cycleSeq: seq, generation: 1, reason: "NBD_READ_FAILED", message: "EIO" }),
      (s) => pause(s, { reason: "maintenance" }),
      (s) => resume(s),
      testStarted(`t${i}`),
      (s) => (Object.keys(s.testFailovers)[0] ? testStopped(Object.keys(s.testFailovers)[0]!)(s) : []),
      (s) => markResyncRequired(s, { reason: "BITMAP_INCONSISTENT" }),
      (s) => startResync(s, { cycleSeq: seq, cutoffAt: cutoff(seq), generation: 1 }),
      (s) => (s.inFlight?.kind === "resync" ? commitCycle(s, cycleInput(vm, s.inFlight.cycleSeq, "resync")) : []),
    ];
    try {
      await executeCommand(store, vm, choices[Math.floor(rnd() * choices.length)]!);
      if (rnd() < 0.5) await applyRetention(store, vm);
    } catch (err) {
      if (!(err instanceof Error) || !("code" in err)) throw err;
    }
  }
}

/** The read models as a full fold computes them, for comparison. */
async function fullFolds(store: EventStore) {
  const status = await StatusProjection.rebuild(store);
  const points = await Promise.all(VMS.map(async (vm) => (await RecoveryPointsProjection.rebuild(store, vm)).list()));
  return { status: status.list(NOW), points };
}

async function modelsOf(models: LedgerReadModels) {
  return { status: models.statusList(NOW), points: VMS.map((vm) => models.pointsOf(vm).list()) };
}

async function head(store: EventStore): Promise<bigint> {
  return (await store.readAll()).at(-1)!.globalPosition;
}

let store: EventStore;
let models: LedgerReadModels | undefined;
beforeEach(() => {
  store = getInMemoryEventStore();
});
afterEach(async () => {
  await models?.close();
  models = undefined;
  await store.close();
});

describe("read models kept by subscription", () => {
  it("equal a full fold after a random sequence of commands, delivered by the subscription alone", async () => {
    models = await LedgerReadModels.open(store, { persistEvery: 50 });
    for (const seed of [1, 2, 3]) {
      await randomCommands(store, 80, seed);
      const at = await head(store);
      await waitFor(() => models!.checkpoint === at, "the subscription to reach the head");
      expect(await modelsOf(models)).toEqual(await fullFolds(store));
    }
    const types = new Set((await store.readAll()).map((e) => e.type));
    for (const t of [
      "CycleFailed",
      "ReplicationPaused",
      "ReplicationResumed",
      "TestFailoverStarted",
      "TestFailoverStopped",
      "ResyncStarted",
      "ResyncCompleted",
      "RecoveryPointMerged",
    ]) {
      expect(types, `the random commands reached ${t}`).toContain(t);
    }
    // Cycle facts of each listed point come from its CycleCommitted, as the stream says.
    const web1 = models.pointsOf("web1");
    const latest = web1.latest()!;
    const committed = (await store.readStream(relationshipStream("web1"))).filter((e) => e.type === "CycleCommitted" && e.data.cycleSeq === latest.cycleSeq).at(-1)!;
    expect(web1.cycleFacts(latest.pointId)).toEqual({
      kind: committed.data.kind,
      generation: committed.data.generation,
      committedAt: committed.data.committedAt,
      dataBytes: committed.data.dataBytes,
      wireBytes: committed.data.wireBytes,
    });
  });

  it("restart from the persisted checkpoint: reads only the events after it, and equals a full fold", async () => {
    await randomCommands(store, 150, 7);
    models = await LedgerReadModels.open(store);
    await models.close(); // persists
    const persistedAt = models.checkpoint;
    models = undefined;
    await randomCommands(store, 40, 8);
    const tail = (await store.readAll({ fromPosition: persistedAt })).length;
    const site = counting(store);
    models = await LedgerReadModels.open(site);
    // The anchor event (checked by hash), the tail, and nothing before the checkpoint.
    expect(site.eventsRead).toBe(tail + 1);
    expect(await modelsOf(models)).toEqual(await fullFolds(store));
  });

  it("ignore a damaged snapshot or one of another fold version, and fold from the first event", async () => {
    await randomCommands(store, 100, 11);
    models = await LedgerReadModels.open(store);
    await models.close();
    models = undefined;
    const good = (await store.readSnapshot(READ_MODELS_SNAPSHOT_KEY))!;
    const total = (await store.readAll()).filter((e) => e.stream.startsWith("replication-")).length;
    const bad = [
      { ...good, state: good.state.replace(/"cyclesCommitted":\d+/, '"cyclesCommitted":999999') },
      sealSnapshot({ key: READ_MODELS_SNAPSHOT_KEY, at: good.at, atHash: good.atHash, foldVersion: good.foldVersion + 1, state: JSON.parse(good.state) }),
      sealSnapshot({ key: READ_MODELS_SNAPSHOT_KEY, at: good.at, atHash: "0".repeat(64), foldVersion: good.foldVersion, state: JSON.parse(good.state) }),
      sealSnapshot({ key: READ_MODELS_SNAPSHOT_KEY, at: good.at, atHash: good.atHash, foldVersion: good.foldVersion, state: { status: { position: "1", vms: [] }, points: [] } }),
    ];
    for (const record of bad) {
      await store.writeSnapshot(record);
      const site = counting(store);
      const m = await LedgerReadModels.open(site);
      expect(site.eventsRead).toBeGreaterThanOrEqual(total);
      expect(await modelsOf(m)).toEqual(await fullFolds(store));
      await m.close();
    }
  });

  it("`rebuildReadModels` folds from scratch, stores the checkpoint, and replaces the relationship snapshots", async () => {
    await randomCommands(store, 120, 21);
    // A wrong relationship snapshot (checksum valid, anchor valid, state invented) is replaced by the rebuild.
    const { version } = await loadRelationship(store, "web1");
    const anchor = (await store.readStream(relationshipStream("web1"), { fromVersion: version! }))[0]!;
    await store.writeSnapshot(sealSnapshot({ key: snapshotKeyOf("web1"), at: version!, atHash: anchor.hash, foldVersion: 1, state: { bogus: true } }));
    const progress: number[] = [];
    const report = await rebuildReadModels(store, (p) => progress.push(p.events));
    const relationshipEvents = (await store.readAll()).filter((e) => e.stream.startsWith("replication-"));
    expect(report).toMatchObject({ events: relationshipEvents.length, vms: VMS.length, position: String(relationshipEvents.at(-1)!.globalPosition) });
    expect(progress.at(-1)).toBe(relationshipEvents.length);
    const site = counting(store);
    models = await LedgerReadModels.open(site);
    expect(site.eventsRead).toBe(1); // the anchor only: the rebuilt snapshot is at the head
    expect(await modelsOf(models)).toEqual(await fullFolds(store));
    for (const vm of VMS) {
      const fresh = counting(store);
      const loaded = await loadRelationship(fresh, vm);
      expect(fresh.eventsRead).toBe(1);
      expect(loaded.state).toEqual(foldRelationship(vm, (await store.readStream(relationshipStream(vm))).map(decodeRelationshipEvent)));
    }
  });

  it("a running instance adopts a rebuild written meanwhile instead of overwriting it, and goes on without gap", async () => {
    models = await LedgerReadModels.open(store, { persistEvery: 1_000_000 });
    await randomCommands(store, 60, 31);
    await rebuildReadModels(store);
    const rebuilt = (await store.readSnapshot(READ_MODELS_SNAPSHOT_KEY))!;
    await randomCommands(store, 60, 32);
    await models.persist();
    expect(models.rebuildsAdopted).toBe(1);
    expect((await store.readSnapshot(READ_MODELS_SNAPSHOT_KEY))?.checksum).toBe(rebuilt.checksum);
    await randomCommands(store, 60, 33);
    const at = await head(store);
    await waitFor(() => models!.checkpoint === at, "the subscription to reach the head");
    expect(await modelsOf(models)).toEqual(await fullFolds(store));
    await models.persist();
    expect(models.rebuildsAdopted).toBe(1);
    expect((await store.readSnapshot(READ_MODELS_SNAPSHOT_KEY))?.at).toBe(at);
  });
});
