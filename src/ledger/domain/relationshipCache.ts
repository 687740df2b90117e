/**
 * Keeps each relationship's fold so a command costs the same on a stream of a year as on one of
 * a day: in memory per store (the events after it are read, usually none or a few), and as a
 * snapshot in the store (so a restarted site reads the snapshot and the events after it).
 *
 * Both are caches of a prefix of an append-only stream, which is why they stay valid without any
 * invalidation; the stream version passed to `append` still settles concurrent writers.
 */
import type { EventStore, RecordedEvent } from "../eventStore.js";
import { openSnapshot, sealSnapshot } from "../snapshots.js";
import { decodeRelationshipEvent, relationshipStream } from "./events.js";
import { RELATIONSHIP_FOLD_VERSION, evolve, initialRelationshipState, type RelationshipState } from "./relationship.js";

/** A snapshot is written once this many events were folded since the last one. */
export const RELATIONSHIP_SNAPSHOT_EVERY = 1000n;

export interface CachedFold {
  readonly state: RelationshipState;
  /** Version of the last event folded; `undefined` while the stream does not exist. */
  readonly version: bigint | undefined;
  /** Hash of the event at `version` (anchors a snapshot to the exact history it folds). */
  readonly hash: string | undefined;
  /** Version the stored snapshot is at, as far as this process knows. */
  readonly snapshotAt: bigint | undefined;
}

export interface SnapshotProblem {
  vmId: string;
  reason: string;
}

const folds = new WeakMap<EventStore, Map<string, CachedFold>>();
const problemListeners = new Set<(p: SnapshotProblem) => void>();

export const RELATIONSHIP_SNAPSHOT_PREFIX = "relationship:";
export const snapshotKeyOf = (vmId: string): string => `${RELATIONSHIP_SNAPSHOT_PREFIX}${vmId}`;

/** Lets a site log snapshots it ignored (damaged, from an older fold); returns the unregister function. */
export function onRelationshipSnapshotIgnored(listener: (p: SnapshotProblem) => void): () => void {
  problemListeners.add(listener);
  return () => problemListeners.delete(listener);
}

export async function loadCachedFold(store: EventStore, vmId: string): Promise<CachedFold> {
  let cache = folds.get(store);
  if (!cache) folds.set(store, (cache = new Map()));
  const stream = relationshipStream(vmId);
  let fold = cache.get(vmId) ?? (await fromSnapshot(store, vmId));
  let recorded = await store.readStream(stream, { fromVersion: fold.version ?? 0n });
  if (fold.version !== undefined) {
    // The first event read is the one the fold ends with: the fold is valid only if it is unchanged.
    const anchor = recorded[0];
    if (!anchor || anchor.version !== fold.version || anchor.hash !== fold.hash) {
      report(vmId, `the stream no longer holds event ${fold.version} with the hash the fold was built on`);
      // Replaced as soon as the new fold is long enough for one.
      fold = empty(vmId);
      recorded = await store.readStream(stream);
    } else {
      recorded = recorded.slice(1);
    }
  }
  fold = foldTail(fold, recorded);
  const current = cache.get(vmId);
  if (!current || (fold.version ?? -1n) >= (current.version ?? -1n)) cache.set(vmId, fold);
  if (fold.version !== undefined && fold.hash !== undefined && fold.version - (fold.snapshotAt ?? -1n) >= RELATIONSHIP_SNAPSHOT_EVERY) {
    fold = await saveSnapshot(store, fold);
    const latest = cache.get(vmId);
    if (latest && latest.version === fold.version) cache.set(vmId, fold);
  }
  return fold;
}

function foldTail(fold: CachedFold, recorded: readonly RecordedEvent[]): CachedFold {
  if (recorded.length === 0) return fold;
  let state = fold.state;
  for (const r of recorded) state = evolve(state, decodeRelationshipEvent(r));
  const last = recorded.at(-1)!;
  return { state, version: last.version, hash: last.hash, snapshotAt: fold.snapshotAt };
}

function empty(vmId: string, snapshotAt?: bigint): CachedFold {
  return { state: initialRelationshipState(vmId), version: undefined, hash: undefined, snapshotAt };
}

async function fromSnapshot(store: EventStore, vmId: string): Promise<CachedFold> {
  const key = snapshotKeyOf(vmId);
  const record = await store.readSnapshot(key);
  const opened = openSnapshot(record, { key, foldVersion: RELATIONSHIP_FOLD_VERSION });
  if (!opened.ok) {
    if (record) report(vmId, opened.reason);
    // An unusable snapshot is replaced as soon as enough events are folded again.
    return empty(vmId, record ? -1n : undefined);
  }
  const state = restoreState(vmId, opened.state);
  if (!state) {
    report(vmId, "snapshot state is not a relationship state of this VM");
    return empty(vmId, -1n);
  }
  return { state, version: opened.at, hash: opened.atHash, snapshotAt: opened.at };
}

/**
 * JSON has no `undefined`: the fields it dropped are put back from the initial state, so a state
 * from a snapshot has the same keys as one folded from the events.
 */
export function restoreState(vmId: string, value: unknown): RelationshipState | undefined {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  const v = value as Partial<RelationshipState>;
  if (v.vmId !== vmId || typeof v.state !== "string" || typeof v.counters !== "object" || !Array.isArray(v.points)) return undefined;
  const initial = initialRelationshipState(vmId);
  return { ...initial, ...v, counters: { ...initial.counters, ...v.counters } };
}

async function saveSnapshot(store: EventStore, fold: CachedFold): Promise<CachedFold> {
  try {
    await store.writeSnapshot(
      sealSnapshot({ key: snapshotKeyOf(fold.state.vmId), at: fold.version!, atHash: fold.hash, foldVersion: RELATIONSHIP_FOLD_VERSION, state: fold.state }),
    );
    return { ...fold, snapshotAt: fold.version };
  } catch (err) {
    // A cache write: the events are already durable, the next load simply folds a longer tail.
    report(fold.state.vmId, `snapshot not written: ${err instanceof Error ? err.message : String(err)}`);
    return fold;
  }
}

function report(vmId: string, reason: string): void {
  for (const l of problemListeners) l({ vmId, reason });
}
