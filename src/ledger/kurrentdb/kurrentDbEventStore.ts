/**
 * The shared ledger on KurrentDB (`@kurrent/kurrentdb-client` 1.x). UNTESTED against a server in
 * this repository's CI (none can run there): the contract suite runs against it only when
 * KURRENTDB_URL is set (test/integration/ledger/kurrentdb.test.ts).
 *
 * Mapping: a ledger stream is a KurrentDB stream, our version is its revision, our global position
 * is the event's $all commit position (unique per event for gRPC appends, increasing in $all
 * order). KurrentDB does not make its data tamper-evident, so the hash chain is ours: each event's
 * KurrentDB metadata is the envelope `{ qreplica: 1, recordedAt, hash, previousHash, metadata }`.
 * Because the next hash needs the head's hash, every append first reads the head and appends with
 * that concrete revision, so two writers can never chain from the same predecessor; an "any" or
 * "stream_exists" append that loses such a race re-reads and retries, a concrete one does not.
 * Snapshots live in streams `qreplica-snapshot:<key>` with $maxCount 1, hidden from reads.
 */
import {
  BACKWARDS,
  END,
  FORWARDS,
  KurrentDBClient,
  NO_STREAM,
  START,
  StreamDeletedError,
  StreamNotFoundError,
  WrongExpectedVersionError as KurrentWrongExpectedVersionError,
  excludeSystemEvents,
  jsonEvent,
  streamNameFilter,
  type AllStreamResolvedEvent,
  type AppendStreamState,
  type ResolvedEvent,
} from "@kurrent/kurrentdb-client";
import { EventEmitter } from "node:events";
import type { Logger } from "../../common/logger.js";
import { errorMessage } from "../../common/errors.js";
import { LedgerArgumentError, LedgerClosedError, LedgerCorruptError, LedgerOpenError, WrongExpectedVersionError } from "../errors.js";
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
import { assertContinuesChain } from "../importChecks.js";
import { validateSnapshotRecord, type SnapshotRecord } from "../snapshots.js";
import { OpenSubscriptions } from "../subscription.js";

export const SNAPSHOT_STREAM_PREFIX = "qreplica-snapshot:";
const SNAPSHOT_EVENT = "QreplicaSnapshot";
/** Retries of an "any"/"stream_exists" append that lost a race for the head. */
const MAX_HEAD_RACES = 20;

export interface KurrentDbEventStoreOptions {
  /** kurrentdb://host:2113?tls=true (any connection string the client accepts). */
  url: string;
  /**
   * Prefix (plus "/") of every KurrentDB stream this ledger writes, and the only streams it reads:
   * lets several ledgers (sites, or test runs) share one server. Default: none.
   */
  namespace?: string;
  /** Fallback re-read interval for subscriptions (default 2000 ms). */
  pollIntervalMs?: number;
  clock?: () => Date;
  logger?: Logger;
}

export interface KurrentDbEventStore extends EventStore {
  readonly location: string;
  /** As PostgresEventStore.importVerbatim: already-sealed events, stored exactly as given. */
  importVerbatim(events: readonly RecordedEvent[]): Promise<void>;
}

interface Envelope {
  qreplica: 1;
  recordedAt: string;
  hash: string;
  previousHash: string;
  metadata: Record<string, unknown>;
}

export async function getKurrentDbEventStore(options: KurrentDbEventStoreOptions): Promise<KurrentDbEventStore> {
  const location = redact(options.url);
  let client: KurrentDBClient;
  try {
    client = KurrentDBClient.connectionString(options.url);
    // Fail at open, naming the server, rather than at the first append.
    await readHead(client, `${SNAPSHOT_STREAM_PREFIX}probe`);
  } catch (err) {
    throw new LedgerOpenError(`Cannot reach the KurrentDB ledger ${location}: ${errorMessage(err)}; check the URL and that the server is up`, location, { cause: err });
  }
  return buildStore(client, location, options);
}

async function readHead(client: KurrentDBClient, stream: string): Promise<ResolvedEvent | undefined> {
  try {
    for await (const e of client.readStream(stream, { direction: BACKWARDS, fromRevision: END, maxCount: 1 })) return e;
  } catch (err) {
    // A deleted snapshot stream reads as missing, as a never-written one does.
    if (err instanceof StreamNotFoundError || err instanceof StreamDeletedError) return undefined;
    throw err;
  }
  return undefined;
}

function buildStore(client: KurrentDBClient, location: string, options: KurrentDbEventStoreOptions): KurrentDbEventStore {
  const ns = options.namespace ? `${options.namespace}/` : "";
  const snapshotPrefix = SNAPSHOT_STREAM_PREFIX + ns;
  const toRecorded = (resolved: ResolvedEvent | AllStreamResolvedEvent): RecordedEvent | undefined => {
    const e = decode(resolved);
    if (!e?.stream.startsWith(ns)) return undefined;
    return { ...e, stream: e.stream.slice(ns.length) };
  };
  const clock = options.clock ?? (() => new Date());
  const appended = new EventEmitter();
  appended.setMaxListeners(0);
  const subscriptions = new OpenSubscriptions({ readPage: (page) => readAll(page), pollIntervalMs: options.pollIntervalMs ?? 2000 }, appended, "appended");
  let live: { unsubscribe(): Promise<void> } | undefined;
  let closed = false;

  const ensureOpen = (): void => {
    if (closed) throw new LedgerClosedError(`ledger ${location} is closed`);
  };

  /** One live $all subscription per store, only as a doorbell: reads still go through readAll. */
  const ensureLive = (): void => {
    if (live) return;
    const sub = client.subscribeToAll({ fromPosition: END, filter: excludeSystemEvents() });
    sub.on("data", () => appended.emit("appended"));
    sub.on("error", (err: Error) => {
      options.logger?.warn({ ledger: location, err: err.message }, "KurrentDB live subscription lost: subscriptions fall back to polling");
      live = undefined;
    });
    live = sub;
  };

  async function appendOnce(stream: string, events: NewEvent[], expected: ExpectedVersion): Promise<AppendResult> {
    const head = await readHead(client, ns + stream);
    const current = head?.event?.revision;
    assertExpectedVersion(stream, expected, current);
    const headHash = head?.event ? envelopeOf(head.event.metadata, ns + stream, current!).hash : GENESIS_HASH;
    const sealed = sealEvents(stream, events, { version: current, hash: headHash }, clock());
    const state: AppendStreamState = current === undefined ? NO_STREAM : current;
    const data = sealed.map((e) =>
      jsonEvent({
        type: e.type,
        data: e.data,
        metadata: { qreplica: 1, recordedAt: e.recordedAt, hash: e.hash, previousHash: e.previousHash, metadata: e.metadata } satisfies Envelope,
      }),
    );
    const r = await client.appendToStream(ns + stream, data, { streamState: state });
    return { nextExpectedVersion: r.nextExpectedRevision, lastGlobalPosition: r.position?.commit ?? 0n };
  }

  async function readAll(opts: ReadAllOptions = {}): Promise<RecordedEvent[]> {
    const limit = validateMaxCount(opts.maxCount) ?? Infinity;
    if (limit === 0) return [];
    const from = opts.fromPosition;
    const prefix = ns + (opts.streamPrefix ?? "");
    const filter = prefix === "" ? excludeSystemEvents() : streamNameFilter({ prefixes: [prefix] });
    const out: RecordedEvent[] = [];
    const iter = client.readAll({ direction: FORWARDS, fromPosition: from === undefined ? START : { commit: from, prepare: from }, filter });
    for await (const resolved of iter) {
      const e = toRecorded(resolved);
      // fromPosition is exclusive in our port and inclusive in KurrentDB's.
      if (!e || (from !== undefined && e.globalPosition <= from)) continue;
      out.push(e);
      if (out.length >= limit) break;
    }
    return out;
  }

  const store: KurrentDbEventStore = {
    location,

    async append(stream, events, expectedVersion) {
      ensureOpen();
      validateAppendArguments(stream, events, expectedVersion);
      if (stream.startsWith(SNAPSHOT_STREAM_PREFIX) || stream.startsWith("$")) {
        throw new LedgerArgumentError(`stream name "${stream}" is reserved in a KurrentDB ledger`);
      }
      for (let attempt = 0; ; attempt++) {
        try {
          const result = await appendOnce(stream, events, expectedVersion);
          appended.emit("appended");
          return result;
        } catch (err) {
          // Ours (from the head check) is final; the server's means another writer moved the head
          // between our read and our append.
          if (!(err instanceof KurrentWrongExpectedVersionError)) throw err;
          const retry = (expectedVersion === "any" || expectedVersion === "stream_exists") && attempt < MAX_HEAD_RACES;
          if (retry) continue;
          const actual = err.actualState;
          throw new WrongExpectedVersionError(stream, expectedVersion, typeof actual === "bigint" ? actual : "no_stream", { cause: err });
        }
      }
    },

    async readStream(stream: string, opts: ReadStreamOptions = {}) {
      ensureOpen();
      validateStreamName(stream);
      const limit = validateMaxCount(opts.maxCount) ?? Infinity;
      if (limit === 0) return [];
      const out: RecordedEvent[] = [];
      try {
        for await (const resolved of client.readStream(ns + stream, { direction: FORWARDS, fromRevision: opts.fromVersion ?? START })) {
          const e = toRecorded(resolved);
          if (e) out.push(e);
          if (out.length >= limit) break;
        }
      } catch (err) {
        if (err instanceof StreamNotFoundError) return [];
        throw err;
      }
      return out;
    },

    async readAll(opts?: ReadAllOptions) {
      ensureOpen();
      return readAll(opts);
    },

    subscribe(opts: SubscribeOptions, handler: EventHandler): Subscription {
      ensureOpen();
      ensureLive();
      return subscriptions.start(opts, handler);
    },

    async streamVersion(stream: string) {
      ensureOpen();
      validateStreamName(stream);
      return (await readHead(client, ns + stream))?.event?.revision;
    },

    async readSnapshot(key: string) {
      ensureOpen();
      const head = await readHead(client, snapshotPrefix + key);
      const d = head?.event?.data as Record<string, unknown> | undefined;
      if (!d || head?.event?.type !== SNAPSHOT_EVENT) return undefined;
      return {
        key: String(d.key),
        at: BigInt(String(d.at)),
        atHash: String(d.atHash),
        schemaVersion: Number(d.schemaVersion),
        foldVersion: Number(d.foldVersion),
        state: String(d.state),
        checksum: String(d.checksum),
        savedAt: new Date(String(d.savedAt)),
      };
    },

    async writeSnapshot(r: SnapshotRecord) {
      ensureOpen();
      validateSnapshotRecord(r);
      const stream = snapshotPrefix + r.key;
      const data = {
        key: r.key,
        at: r.at.toString(),
        atHash: r.atHash,
        schemaVersion: r.schemaVersion,
        foldVersion: r.foldVersion,
        state: r.state,
        checksum: r.checksum,
        savedAt: r.savedAt.toISOString(),
      };
      await client.appendToStream(stream, jsonEvent({ type: SNAPSHOT_EVENT, data }));
      await client.setStreamMetadata(stream, { maxCount: 1 });
    },

    async deleteSnapshots(keyPrefix: string) {
      ensureOpen();
      const streams = new Set<string>();
      for await (const e of client.readAll({ direction: FORWARDS, fromPosition: START, filter: streamNameFilter({ prefixes: [snapshotPrefix + keyPrefix] }) })) {
        if (e.event) streams.add(e.event.streamId);
      }
      let n = 0;
      for (const stream of streams) {
        if (!(await readHead(client, stream))) continue;
        await client.deleteStream(stream);
        n++;
      }
      return n;
    },

    async importVerbatim(events) {
      ensureOpen();
      // KurrentDB appends are atomic per stream, so a batch is written stream run by stream run.
      for (let i = 0; i < events.length; ) {
        const stream = events[i]!.stream;
        let j = i;
        while (j < events.length && events[j]!.stream === stream) j++;
        const run = events.slice(i, j);
        const head = await readHead(client, ns + stream);
        let cursor = { version: head?.event?.revision, hash: head?.event ? envelopeOf(head.event.metadata, ns + stream, head.event.revision).hash : GENESIS_HASH };
        const data = run.map((e) => {
          const row = assertContinuesChain(e, cursor);
          cursor = { version: e.version, hash: e.hash };
          return jsonEvent({
            type: e.type,
            data: JSON.parse(row.dataJson) as Record<string, unknown>,
            metadata: {
              qreplica: 1,
              recordedAt: row.recordedAt,
              hash: e.hash,
              previousHash: e.previousHash,
              metadata: JSON.parse(row.metadataJson) as Record<string, unknown>,
            } satisfies Envelope,
          });
        });
        await client.appendToStream(ns + stream, data, { streamState: head?.event ? head.event.revision : NO_STREAM });
        i = j;
      }
      appended.emit("appended");
    },

    async close() {
      if (closed) return;
      closed = true;
      await subscriptions.closeAll();
      await live?.unsubscribe().catch(() => undefined);
      await client.dispose();
    },
  };
  return store;
}

function envelopeOf(metadata: unknown, stream: string, version: bigint, position = 0n): Envelope {
  const m = metadata as Partial<Envelope> | undefined;
  if (m?.qreplica !== 1 || typeof m.hash !== "string" || typeof m.previousHash !== "string" || typeof m.recordedAt !== "string") {
    throw new LedgerCorruptError(`KurrentDB event ${stream}@${version} has no qreplica envelope in its metadata: not written by qreplica, or edited`, position);
  }
  return { qreplica: 1, recordedAt: m.recordedAt, hash: m.hash, previousHash: m.previousHash, metadata: (m.metadata as Record<string, unknown>) ?? {} };
}

function decode(resolved: ResolvedEvent | AllStreamResolvedEvent): RecordedEvent | undefined {
  const e = resolved.event;
  if (!e || e.streamId.startsWith("$") || e.streamId.startsWith(SNAPSHOT_STREAM_PREFIX)) return undefined;
  const position = e.position?.commit ?? resolved.commitPosition ?? 0n;
  const env = envelopeOf(e.metadata, e.streamId, e.revision, position);
  if (!e.isJson || typeof e.data !== "object" || e.data === null || Array.isArray(e.data)) {
    throw new LedgerCorruptError(`KurrentDB event ${e.streamId}@${e.revision} data is not a JSON object`, position);
  }
  return {
    stream: e.streamId,
    version: e.revision,
    globalPosition: position,
    type: e.type,
    data: structuredClone(e.data as Record<string, unknown>),
    metadata: structuredClone(env.metadata),
    recordedAt: new Date(env.recordedAt),
    hash: env.hash,
    previousHash: env.previousHash,
  };
}

function redact(url: string): string {
  return url.replace(/\/\/([^:@/]+):([^@/]+)@/, "//$1:***@");
}
