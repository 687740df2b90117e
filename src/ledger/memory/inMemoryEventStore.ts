/**
 * Reference implementation of the EventStore port: the simplest code that passes the contract
 * suite, for unit tests and for reading what the port means. Nothing survives the process.
 */
import { EventEmitter } from "node:events";
import { LedgerClosedError } from "../errors.js";
import {
  assertExpectedVersion,
  validateAppendArguments,
  validateMaxCount,
  validateStreamName,
  type AppendResult,
  type EventHandler,
  type EventStore,
  type ExpectedVersion,
  type NewEvent,
  type ReadAllOptions,
  type ReadStreamOptions,
  type RecordedEvent,
  type SubscribeOptions,
  type Subscription,
} from "../eventStore.js";
import { GENESIS_HASH, sealEvents } from "../hashChain.js";
import { OpenSubscriptions } from "../subscription.js";
import { validateSnapshotRecord, type SnapshotRecord } from "../snapshots.js";

export interface InMemoryEventStoreOptions {
  /** Supplies `recordedAt`; tests pin it to make hashes reproducible. */
  clock?: () => Date;
}

export function getInMemoryEventStore(options: InMemoryEventStoreOptions = {}): EventStore {
  const clock = options.clock ?? (() => new Date());
  /** Every event in global order; index i holds global position i + 1. */
  const all: RecordedEvent[] = [];
  /** Per stream, the events in version order (version n at index n). */
  const streams = new Map<string, RecordedEvent[]>();
  const appended = new EventEmitter();
  appended.setMaxListeners(0);
  const subscriptions = new OpenSubscriptions({ readPage: (page) => readAllSync(page) }, appended, "appended");
  const snapshots = new Map<string, SnapshotRecord>();
  let closed = false;

  const ensureOpen = (): void => {
    if (closed) throw new LedgerClosedError("in-memory event store is closed");
  };

  // Callers get their own copies: a handler mutating an event must not alter the ledger.
  const copy = (e: RecordedEvent): RecordedEvent => structuredClone(e);

  function readAllSync(opts: ReadAllOptions = {}): RecordedEvent[] {
    const limit = validateMaxCount(opts.maxCount) ?? Infinity;
    const from = opts.fromPosition ?? 0n;
    const out: RecordedEvent[] = [];
    // Positions are 1-based and contiguous here, so the start index is the exclusive position.
    for (let i = from < 0n ? 0 : Number(from); i < all.length && out.length < limit; i++) {
      const e = all[i]!;
      if (opts.streamPrefix === undefined || e.stream.startsWith(opts.streamPrefix)) out.push(copy(e));
    }
    return out;
  }

  return {
    async append(stream: string, events: NewEvent[], expectedVersion: ExpectedVersion): Promise<AppendResult> {
      ensureOpen();
      validateAppendArguments(stream, events, expectedVersion);
      const existing = streams.get(stream) ?? [];
      const last = existing.at(-1);
      assertExpectedVersion(stream, expectedVersion, last?.version);

      const sealed = sealEvents(stream, events, { version: last?.version, hash: last?.hash ?? GENESIS_HASH }, clock());
      for (const s of sealed) {
        const recorded: RecordedEvent = {
          stream,
          version: s.version,
          globalPosition: BigInt(all.length + 1),
          type: s.type,
          data: s.data,
          metadata: s.metadata,
          recordedAt: new Date(s.recordedAt),
          hash: s.hash,
          previousHash: s.previousHash,
        };
        all.push(recorded);
        existing.push(recorded);
      }
      streams.set(stream, existing);
      appended.emit("appended");
      const tail = existing.at(-1)!;
      return { nextExpectedVersion: tail.version, lastGlobalPosition: tail.globalPosition };
    },

    async readStream(stream: string, opts: ReadStreamOptions = {}): Promise<RecordedEvent[]> {
      ensureOpen();
      validateStreamName(stream);
      const limit = validateMaxCount(opts.maxCount) ?? Infinity;
      const from = opts.fromVersion ?? 0n;
      const events = streams.get(stream) ?? [];
      return events
        .filter((e) => e.version >= from)
        .slice(0, limit)
        .map(copy);
    },

    async readAll(opts?: ReadAllOptions): Promise<RecordedEvent[]> {
      ensureOpen();
      return readAllSync(opts);
    },

    subscribe(opts: SubscribeOptions, handler: EventHandler): Subscription {
      ensureOpen();
      return subscriptions.start(opts, handler);
    },

    async streamVersion(stream: string): Promise<bigint | undefined> {
      ensureOpen();
      validateStreamName(stream);
      return streams.get(stream)?.at(-1)?.version;
    },

    async readSnapshot(key: string): Promise<SnapshotRecord | undefined> {
      ensureOpen();
      const r = snapshots.get(key);
      return r && { ...r, savedAt: new Date(r.savedAt) };
    },

    async writeSnapshot(record: SnapshotRecord): Promise<void> {
      ensureOpen();
      validateSnapshotRecord(record);
      snapshots.set(record.key, { ...record, savedAt: new Date(record.savedAt) });
    },

    async deleteSnapshots(keyPrefix: string): Promise<number> {
      ensureOpen();
      let n = 0;
      for (const key of [...snapshots.keys()]) if (key.startsWith(keyPrefix) && snapshots.delete(key)) n++;
      return n;
    },

    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      await subscriptions.closeAll();
    },
  };
}
