/**
 * Snapshots: a cache of folded state stored beside the events, so loading an aggregate or a read
 * model reads a snapshot plus the events after it instead of the whole history.
 *
 * A snapshot is never trusted over the events. It is used only when its envelope schema and its
 * fold version are exactly the running code's, its checksum matches its bytes, and (for a stream)
 * the event it claims to include is still the one in the stream (same hash); anything else is
 * ignored and the fold is rebuilt from the events. Adapters store and return records verbatim;
 * all checking lives here, so every adapter ignores exactly the same snapshots. (The planned
 * KurrentDB adapter can keep each key as a stream with $maxCount 1.)
 */
import { createHash } from "node:crypto";
import { LedgerArgumentError } from "./errors.js";
import { canonicalJson } from "./hashChain.js";

/** Version of the envelope below; a record with another one is ignored. */
export const SNAPSHOT_SCHEMA_VERSION = 1;

/** What adapters store under `key`, as written (one record per key: a write replaces). */
export interface SnapshotRecord {
  /** e.g. `relationship:vm-1`, `read-models`. */
  readonly key: string;
  /** The stream version (aggregate) or global position (read model) the state includes. */
  readonly at: bigint;
  /** Hash of the event at `at` for a stream snapshot ("" for a read model). */
  readonly atHash: string;
  readonly schemaVersion: number;
  /** Version of the fold that produced `state`: bumped whenever that fold changes meaning. */
  readonly foldVersion: number;
  /** JSON text of the folded state. */
  readonly state: string;
  /** sha256 hex over every field above: detects a damaged or hand-edited record. */
  readonly checksum: string;
  readonly savedAt: Date;
}

/** The snapshot half of the EventStore port. */
export interface SnapshotStore {
  readSnapshot(key: string): Promise<SnapshotRecord | undefined>;
  /** Replaces the record under the key. A cache write: callers may ignore its failure. */
  writeSnapshot(record: SnapshotRecord): Promise<void>;
  /** Removes every record whose key starts with the prefix ("" for all); returns how many. */
  deleteSnapshots(keyPrefix: string): Promise<number>;
}

export function validateSnapshotRecord(r: SnapshotRecord): void {
  if (typeof r?.key !== "string" || r.key.length === 0) throw new LedgerArgumentError("snapshot key must be a non-empty string");
  if (typeof r.at !== "bigint" || r.at < 0n) throw new LedgerArgumentError(`snapshot ${r.key}: 'at' must be a bigint >= 0n`);
  for (const f of ["schemaVersion", "foldVersion"] as const) {
    if (!Number.isSafeInteger(r[f])) throw new LedgerArgumentError(`snapshot ${r.key}: ${f} must be an integer`);
  }
  for (const f of ["atHash", "state", "checksum"] as const) {
    if (typeof r[f] !== "string") throw new LedgerArgumentError(`snapshot ${r.key}: ${f} must be a string`);
  }
  if (!(r.savedAt instanceof Date) || Number.isNaN(r.savedAt.getTime())) throw new LedgerArgumentError(`snapshot ${r.key}: savedAt must be a valid Date`);
}

function checksumOf(r: Omit<SnapshotRecord, "checksum" | "savedAt">): string {
  return createHash("sha256").update(`${r.key}\n${r.at}\n${r.atHash}\n${r.schemaVersion}\n${r.foldVersion}\n`).update(r.state).digest("hex");
}

/** Builds a record for plain-JSON `state` (refused otherwise, as events are). */
export function sealSnapshot(input: { key: string; at: bigint; atHash?: string; foldVersion: number; state: unknown; savedAt?: Date }): SnapshotRecord {
  const base = {
    key: input.key,
    at: input.at,
    atHash: input.atHash ?? "",
    schemaVersion: SNAPSHOT_SCHEMA_VERSION,
    foldVersion: input.foldVersion,
    state: canonicalJson(input.state),
  };
  return { ...base, checksum: checksumOf(base), savedAt: input.savedAt ?? new Date() };
}

export type OpenedSnapshot = { ok: true; at: bigint; atHash: string; state: unknown } | { ok: false; reason: string };

/** The state in `record` if the running code may use it, else why not. */
export function openSnapshot(record: SnapshotRecord | undefined, expect: { key: string; foldVersion: number }): OpenedSnapshot {
  if (!record) return { ok: false, reason: "no snapshot" };
  if (record.key !== expect.key) return { ok: false, reason: `snapshot is for ${record.key}` };
  if (record.schemaVersion !== SNAPSHOT_SCHEMA_VERSION) return { ok: false, reason: `snapshot schema ${record.schemaVersion}, this code writes ${SNAPSHOT_SCHEMA_VERSION}` };
  if (record.foldVersion !== expect.foldVersion) return { ok: false, reason: `snapshot fold version ${record.foldVersion}, this code folds version ${expect.foldVersion}` };
  if (checksumOf(record) !== record.checksum) return { ok: false, reason: "snapshot checksum does not match its contents (damaged)" };
  try {
    return { ok: true, at: record.at, atHash: record.atHash, state: JSON.parse(record.state) as unknown };
  } catch {
    return { ok: false, reason: "snapshot state is not valid JSON (damaged)" };
  }
}
