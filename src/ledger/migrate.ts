/**
 * `qreplica ledger migrate`: copies a ledger (in practice the site's SQLite file) into an empty
 * shared store event by event, keeping every version, recordedAt and hash, so the destination's
 * chains are the source's chains and `ledger verify` on either gives the same answer.
 *
 * The source is verified first (a broken chain is never carried over), every stored event is
 * re-checked against the destination's head as it is written, and the destination is verified at
 * the end and compared stream by stream with the source. Snapshots are not copied: they are a cache
 * the site rebuilds from the events.
 */
import { QreplicaError } from "../common/errors.js";
import { LedgerIntegrityError } from "./errors.js";
import type { EventStore, RecordedEvent } from "./eventStore.js";
import { verifyLedger } from "./verify.js";

export interface VerbatimImporter extends EventStore {
  importVerbatim(events: readonly RecordedEvent[]): Promise<void>;
}

export interface MigrateReport {
  streams: number;
  events: number;
  sourceVerified: boolean;
  destinationVerified: boolean;
  durationMs: number;
}

/** The destination already holds events: migrating into it would interleave two histories. */
export class LedgerMigrateTargetNotEmptyError extends QreplicaError {
  readonly code = "LEDGER_MIGRATE_TARGET_NOT_EMPTY" as const;
  constructor(readonly destination: string) {
    super(`${destination} already holds ledger events; migrate only into an empty ledger (another PostgreSQL schema or KurrentDB namespace)`);
  }
}

/** After the copy the destination does not say what the source says (should never happen). */
export class LedgerMigrateMismatchError extends QreplicaError {
  readonly code = "LEDGER_MIGRATE_MISMATCH" as const;
}

export async function migrateLedger(
  source: EventStore,
  destination: VerbatimImporter,
  opts: { destinationName: string; pageSize?: number; onProgress?: (copied: number) => void },
): Promise<MigrateReport> {
  const started = Date.now();
  const pageSize = opts.pageSize ?? 500;
  const before = await verifyLedger(source);
  if (!before.ok) throw new LedgerIntegrityError(before.problems);
  if ((await destination.readAll({ maxCount: 1 })).length > 0) throw new LedgerMigrateTargetNotEmptyError(opts.destinationName);

  const heads = new Map<string, { version: bigint; hash: string }>();
  let copied = 0;
  for (let after = 0n; ; ) {
    const page = await source.readAll({ fromPosition: after, maxCount: pageSize });
    if (page.length === 0) break;
    await destination.importVerbatim(page);
    for (const e of page) heads.set(e.stream, { version: e.version, hash: e.hash });
    copied += page.length;
    opts.onProgress?.(copied);
    after = page.at(-1)!.globalPosition;
    if (page.length < pageSize) break;
  }

  const after = await verifyLedger(destination);
  if (!after.ok) throw new LedgerIntegrityError(after.problems);
  if (after.events !== before.events || after.streams !== before.streams) {
    throw new LedgerMigrateMismatchError(`copied ${before.events} events in ${before.streams} streams but ${opts.destinationName} holds ${after.events} in ${after.streams}`);
  }
  for (const [stream, head] of heads) {
    const [last] = await destination.readStream(stream, { fromVersion: head.version, maxCount: 1 });
    if (last?.hash !== head.hash) throw new LedgerMigrateMismatchError(`stream "${stream}" ends with a different hash in ${opts.destinationName} than in the source`);
  }
  return { streams: before.streams, events: before.events, sourceVerified: true, destinationVerified: true, durationMs: Date.now() - started };
}
