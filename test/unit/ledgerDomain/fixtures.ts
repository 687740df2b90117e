/** Builders shared by the relationship tests: realistic inputs with predictable numbers. */
import {
  commitCycle,
  completeMerge,
  enableReplication,
  evolve,
  executeCommand,
  failover,
  initialRelationshipState,
  startInitialReplication,
  startMerge,
  startTestFailover,
  stopTestFailover,
  type CommitCycleInput,
  type CycleKind,
  type Decide,
  type EnableReplicationInput,
  type EventStore,
  type RelationshipEvent,
  type RelationshipState,
} from "../../../src/ledger/index.js";

export const GiB = 1024 ** 3;
const T0 = Date.parse("2025-03-01T10:00:00.000Z");

/** Cycle n is cut at T0 + 30 s * n, as with a 30 s replication interval. */
export const cutoff = (seq: number): string => new Date(T0 + seq * 30_000).toISOString();
export const committed = (seq: number): string => new Date(T0 + seq * 30_000 + 4_000).toISOString();

export const DISK_IDS = ["disk0", "disk1"] as const;

export const baseImage = (vmId: string, diskId: string): string => `/srv/qreplica/${vmId}/${diskId}/base.qcow2`;
export const image = (vmId: string, diskId: string, seq: number): string => (seq === 1 ? baseImage(vmId, diskId) : `/srv/qreplica/${vmId}/${diskId}/rp-${seq}.qcow2`);

export function enableInput(overrides: Partial<EnableReplicationInput> = {}): EnableReplicationInput {
  return {
    primarySiteId: "site-a",
    replicaSiteId: "site-b",
    primaryIdentity: "agent.site-a.example",
    disks: [
      { diskId: "disk0", sizeBytes: 20 * GiB },
      { diskId: "disk1", sizeBytes: 2 * GiB },
    ],
    vmSpec: { machine: "q35", memoryMiB: 4096, vcpus: 2 },
    retention: { maxPoints: 3 },
    ...overrides,
  };
}

export function cycleInput(vmId: string, seq: number, kind: CycleKind = "incremental", overrides: Partial<CommitCycleInput> = {}): CommitCycleInput {
  return {
    cycleSeq: seq,
    kind,
    generation: 1,
    cutoffAt: cutoff(seq),
    committedAt: committed(seq),
    consistency: seq % 2 === 0 ? "application" : "crash",
    disks: [
      { diskId: "disk0", sizeBytes: 20 * GiB, imagePath: image(vmId, "disk0", seq) },
      { diskId: "disk1", sizeBytes: 2 * GiB, imagePath: image(vmId, "disk1", seq) },
    ],
    dataBytes: seq * 1_000_000,
    zeroBytes: seq * 10_000,
    wireBytes: seq * 400_000,
    extents: seq * 3,
    durationMs: 1_500,
    ...overrides,
  };
}

/** Applies a decision to an in-memory state, as executeCommand would after a successful append. */
export function run(s: RelationshipState, decide: Decide): RelationshipState {
  return decide(s).reduce(evolve, s);
}

export function fold(vmId: string, ...decisions: Decide[]): RelationshipState {
  return decisions.reduce(run, initialRelationshipState(vmId));
}

export const enabled: Decide = (s) => enableReplication(s, enableInput());
export const initialStarted: Decide = (s) => startInitialReplication(s, { cycleSeq: 1, cutoffAt: cutoff(1), generation: 1 });
export const initialCommitted: Decide = (s) => commitCycle(s, cycleInput(s.vmId, 1, "full"));
export const incremental =
  (seq: number): Decide =>
  (s) =>
    commitCycle(s, cycleInput(s.vmId, seq));
/** Records events as they are, without a decision (e.g. to fold a history as written). */
export const record =
  (...events: RelationshipEvent[]): Decide =>
  () =>
    events;

export const TEST_STARTED_AT = "2025-03-01T11:00:00.000Z";
export const TEST_STOPPED_AT = "2025-03-01T11:30:00.000Z";
/** Through the commands: a test failover on `pointId` (the latest when absent), and its stop. */
export const testStarted =
  (testId: string, pointId?: string): Decide =>
  (s) =>
    startTestFailover(s, { testId, ...(pointId === undefined ? {} : { pointId }), startedAt: TEST_STARTED_AT });
export const testStopped =
  (testId: string): Decide =>
  (s) =>
    stopTestFailover(s, { testId, stoppedAt: TEST_STOPPED_AT });
export const failedOverUnplanned =
  (pointId?: string): Decide =>
  (s) =>
    failover(s, { kind: "unplanned", ...(pointId === undefined ? {} : { pointId }) });

/** Enable, initial replication (cycle 1), then incremental cycles 2..lastSeq, applying retention. */
export async function protect(store: EventStore, vmId: string, opts: { lastSeq: number; maxPoints?: number; retention?: boolean } = { lastSeq: 1 }): Promise<void> {
  await executeCommand(store, vmId, (s) => enableReplication(s, enableInput({ retention: { maxPoints: opts.maxPoints ?? 3 } })));
  await executeCommand(store, vmId, initialStarted);
  await executeCommand(store, vmId, initialCommitted);
  for (let seq = 2; seq <= opts.lastSeq; seq++) {
    await executeCommand(store, vmId, incremental(seq));
    if (opts.retention !== false) await applyRetention(store, vmId);
  }
}

/** What the retention worker does: merge oldest points until the VM is within retention. */
export async function applyRetention(store: EventStore, vmId: string): Promise<string[]> {
  const merged: string[] = [];
  for (;;) {
    const started = await executeCommand(store, vmId, startMerge);
    const event = started.events[0];
    if (event?.type !== "RecoveryPointMergeStarted") return merged;
    await executeCommand(store, vmId, (s) =>
      completeMerge(s, {
        pointId: event.data.pointId,
        disks: DISK_IDS.map((diskId) => ({ diskId, imagePath: baseImage(vmId, diskId) })),
      }),
    );
    merged.push(event.data.pointId);
  }
}

/** Resolves with what `fn` threw; fails the test if it did not throw. */
export async function caught(fn: () => unknown): Promise<unknown> {
  try {
    await fn();
  } catch (err) {
    return err;
  }
  throw new Error("expected an error, none was thrown");
}

/**
 * Holds every caller's first read until `parties` reads are waiting, so all of them decide on
 * the same version before anyone appends: the race is forced, not hoped for. The returned
 * wrapper may be applied to several stores (e.g. two connections to one SQLite file).
 */
export function raceBarrier(parties: number): (inner: EventStore) => EventStore {
  const barrier = armableBarrier(parties);
  barrier.arm();
  return (inner) => barrier.wrap(inner);
}

/**
 * Like raceBarrier, but armed on demand: the wrappers can fold first
 * (their folds are kept per wrapper object), and only the reads after `arm()` are held until
 * `parties` of them wait, so the racers decide on the same version from warm folds.
 */
export function armableBarrier(parties: number): { wrap(inner: EventStore): EventStore; arm(): void } {
  let waiting: Array<() => void> = [];
  let armed = false;
  return {
    arm: () => void (armed = true),
    wrap: (inner) => ({
      append: (...a) => inner.append(...a),
      readAll: (...a) => inner.readAll(...a),
      subscribe: (...a) => inner.subscribe(...a),
      streamVersion: (...a) => inner.streamVersion(...a),
      readSnapshot: (...a) => inner.readSnapshot(...a),
      writeSnapshot: (...a) => inner.writeSnapshot(...a),
      deleteSnapshots: (...a) => inner.deleteSnapshots(...a),
      close: () => inner.close(),
      async readStream(stream, opts) {
        const events = await inner.readStream(stream, opts);
        if (armed) {
          await new Promise<void>((release) => {
            waiting.push(release);
            if (waiting.length === parties) {
              armed = false;
              for (const r of waiting) r();
              waiting = [];
            }
          });
        }
        return events;
      },
    }),
  };
}

export const racing = (inner: EventStore, parties: number): EventStore => raceBarrier(parties)(inner);
