/**
 * The site's read models (status per VM, the recovery-point catalogue per VM) kept up to date by
 * one subscription to the ledger, instead of folding the ledger again for every query, with
 * their checkpoint (the global position folded so far) persisted as a snapshot so a restart
 * reads the snapshot and the events after it. They are derived data: `rebuildReadModels` folds
 * them again from the first event at any time, and a stored snapshot that is damaged or from
 * another fold version is ignored (and the models rebuilt), never trusted over the events.
 */
import type { Logger } from "../../common/logger.js";
import type { EventStore, RecordedEvent, Subscription } from "../eventStore.js";
import { RELATIONSHIP_STREAM_PREFIX, vmIdOfStream } from "../domain/events.js";
import { RELATIONSHIP_FOLD_VERSION } from "../domain/relationship.js";
import { RELATIONSHIP_SNAPSHOT_PREFIX, snapshotKeyOf } from "../domain/relationshipCache.js";
import { openSnapshot, sealSnapshot } from "../snapshots.js";
import { RecoveryPointsProjection } from "./recoveryPoints.js";
import { StatusProjection, type VmStatus } from "./status.js";

/** Bump when a read model's fold changes meaning; the status fold also depends on `evolve`'s. */
export const READ_MODELS_FOLD_VERSION = 3;
export const READ_MODELS_SNAPSHOT_KEY = "read-models";
const FOLD_VERSION = READ_MODELS_FOLD_VERSION * 10_000 + RELATIONSHIP_FOLD_VERSION;
const PAGE = 1000;
const PERSIST_EVERY = 5000;

export interface ReadModelsOptions {
  logger?: Logger;
  /**
   * Persist the checkpoint after this many events were folded since the last time (default 5000).
   * The snapshot holds every VM's models, so it is written far less often than a relationship's:
   * a restart folds at most this many events again.
   */
  persistEvery?: number;
}

export interface RebuildProgress {
  events: number;
  position: bigint;
}

export interface RebuildReport {
  events: number;
  vms: number;
  position: string;
  durationMs: number;
}

export class LedgerReadModels {
  private status = new StatusProjection();
  private points = new Map<string, RecoveryPointsProjection>();
  private position = 0n;
  private positionHash = "";
  private persistedAt = 0n;
  private subscription: Subscription | undefined;
  private persisting: Promise<void> = Promise.resolve();
  private folded = 0;
  /** Checksum of the stored snapshot this instance restored or wrote last. */
  private knownChecksum: string | undefined;
  /** Set for the site's long-lived instance: a snapshot someone else wrote is adopted, not overwritten. */
  private adoptsForeign = false;
  private adopted = 0;

  private constructor(
    private readonly store: EventStore,
    private readonly opts: ReadModelsOptions,
  ) {}

  /**
   * Restores the models from their snapshot (or from scratch when there is none usable), catches
   * up, and keeps them current with a subscription until `close()`.
   */
  static async open(store: EventStore, opts: ReadModelsOptions = {}): Promise<LedgerReadModels> {
    const models = new LedgerReadModels(store, opts);
    models.adoptsForeign = true;
    await models.restore();
    await models.refresh();
    if (models.position - models.persistedAt >= BigInt(opts.persistEvery ?? PERSIST_EVERY)) await models.persist();
    models.subscription = store.subscribe({ fromPosition: models.position, streamPrefix: RELATIONSHIP_STREAM_PREFIX }, (e) => {
      models.apply(e);
      models.maybePersist();
    });
    // Queries still catch up by themselves (refresh), and fail with the same error, which they report.
    models.subscription.closed.catch((err: unknown) => opts.logger?.error({ err }, "read-model subscription stopped; queries fold the ledger tail themselves"));
    return models;
  }

  /** Folds models from the ledger's first event, without any snapshot; nothing is subscribed. */
  static async fromScratch(
    store: EventStore,
    onProgress?: (p: RebuildProgress) => void,
    opts: ReadModelsOptions = {},
    onEvent?: (e: RecordedEvent) => void,
  ): Promise<LedgerReadModels> {
    const models = new LedgerReadModels(store, opts);
    for (;;) {
      const page = await store.readAll({ fromPosition: models.position, maxCount: PAGE * 10, streamPrefix: RELATIONSHIP_STREAM_PREFIX });
      for (const e of page) {
        models.apply(e);
        onEvent?.(e);
      }
      onProgress?.({ events: models.eventsFolded, position: models.position });
      if (page.length < PAGE * 10) return models;
    }
  }

  /** Events folded by this instance (after its snapshot, if it started from one). */
  get eventsFolded(): number {
    return this.folded;
  }

  statusSnapshot(): ReturnType<StatusProjection["toSnapshot"]> {
    return this.status.toSnapshot();
  }

  /** The global position of the last event folded. */
  get checkpoint(): bigint {
    return this.position;
  }

  /**
   * Folds whatever the subscription has not delivered yet, so a query answers with everything
   * appended before it (read-your-writes for the operator who just gave a command).
   */
  async refresh(): Promise<void> {
    for (;;) {
      const page = await this.store.readAll({ fromPosition: this.position, maxCount: PAGE, streamPrefix: RELATIONSHIP_STREAM_PREFIX });
      for (const e of page) this.apply(e);
      if (page.length < PAGE) return;
    }
  }

  statusOf(vmId: string, now: Date): VmStatus | undefined {
    return this.status.get(vmId, now);
  }

  statusList(now: Date): VmStatus[] {
    return this.status.list(now);
  }

  /** Every VM with a relationship stream, sorted. */
  vmIds(): string[] {
    return this.status.vmIds();
  }

  /** The VM's recovery-point catalogue; an empty one for a VM without events. */
  pointsOf(vmId: string): RecoveryPointsProjection {
    return this.points.get(vmId) ?? new RecoveryPointsProjection(vmId);
  }

  /** How many times this instance took over models rebuilt by `qreplica ledger rebuild`. */
  get rebuildsAdopted(): number {
    return this.adopted;
  }

  /**
   * Writes the models and their checkpoint as the snapshot a restart starts from. On the site's
   * instance, a snapshot written meanwhile by `qreplica ledger rebuild` is adopted instead.
   */
  async persist(): Promise<void> {
    if (this.adoptsForeign && (await this.adoptRebuilt())) return;
    const position = this.position;
    const record = sealSnapshot({
      key: READ_MODELS_SNAPSHOT_KEY,
      at: position,
      atHash: this.positionHash,
      foldVersion: FOLD_VERSION,
      state: { status: this.status.toSnapshot(), points: [...this.points.values()].map((p) => p.toSnapshot()) },
    });
    const write = this.persisting.then(() => this.store.writeSnapshot(record));
    this.persisting = write.catch(() => undefined);
    await write;
    this.knownChecksum = record.checksum;
    if (position > this.persistedAt) this.persistedAt = position;
  }

  /** Stops the subscription and persists the checkpoint. */
  async close(): Promise<void> {
    await this.subscription?.close();
    this.subscription = undefined;
    await this.persist().catch((err: unknown) => this.opts.logger?.warn({ err }, "read models not persisted at close; the next start folds a longer tail"));
  }

  private apply(e: RecordedEvent): void {
    if (e.globalPosition <= this.position) return;
    this.position = e.globalPosition;
    this.positionHash = e.hash;
    this.folded++;
    this.status.apply(e);
    const vmId = vmIdOfStream(e.stream);
    if (vmId === undefined) return;
    let catalogue = this.points.get(vmId);
    if (!catalogue) this.points.set(vmId, (catalogue = new RecoveryPointsProjection(vmId)));
    catalogue.apply(e);
  }

  private maybePersist(): void {
    if (this.position - this.persistedAt < BigInt(this.opts.persistEvery ?? PERSIST_EVERY)) return;
    this.persistedAt = this.position;
    void this.persist().catch((err: unknown) => this.opts.logger?.warn({ err }, "read models checkpoint not persisted; retried later"));
  }

  /**
   * Takes over a usable snapshot this instance did not write (a rebuild's): caught up on a fresh
   * instance, then swapped in with no await between the check and the swap, so the subscription
   * goes on from a position the new models have already folded (no gap, no event twice).
   */
  private async adoptRebuilt(): Promise<boolean> {
    const record = await this.store.readSnapshot(READ_MODELS_SNAPSHOT_KEY);
    if (!record || record.checksum === this.knownChecksum) return false;
    const next = new LedgerReadModels(this.store, {});
    if (!(await next.restore())) return false;
    for (;;) {
      await next.refresh();
      if (next.position >= this.position) break;
    }
    this.status = next.status;
    this.points = next.points;
    this.position = next.position;
    this.positionHash = next.positionHash;
    this.persistedAt = next.persistedAt;
    this.knownChecksum = record.checksum;
    this.adopted++;
    this.opts.logger?.info({ position: String(record.at) }, "read models rebuilt by 'qreplica ledger rebuild' adopted");
    return true;
  }

  /** True when the stored snapshot was usable and is now this instance's state. */
  private async restore(): Promise<boolean> {
    const record = await this.store.readSnapshot(READ_MODELS_SNAPSHOT_KEY);
    if (!record) return false;
    const ignore = (reason: string): false => {
      this.opts.logger?.warn({ reason }, "read-model snapshot ignored: folding the read models from the first event");
      this.status = new StatusProjection();
      this.points = new Map();
      this.position = 0n;
      this.positionHash = "";
      return false;
    };
    const opened = openSnapshot(record, { key: READ_MODELS_SNAPSHOT_KEY, foldVersion: FOLD_VERSION });
    if (!opened.ok) return ignore(opened.reason);
    if (opened.at > 0n) {
      // The snapshot must end on the very event the ledger holds at its position.
      const [anchor] = await this.store.readAll({ fromPosition: opened.at - 1n, maxCount: 1, streamPrefix: RELATIONSHIP_STREAM_PREFIX });
      if (anchor?.globalPosition !== opened.at || anchor.hash !== opened.atHash)
        return ignore(`the ledger no longer holds the event at position ${opened.at} the snapshot was built on`);
    }
    const v = opened.state as { status?: unknown; points?: unknown } | null;
    const status = StatusProjection.fromSnapshot(v?.status);
    const points = Array.isArray(v?.points) ? v.points.map((p) => RecoveryPointsProjection.fromSnapshot(p)) : undefined;
    if (!status || !points || points.some((p) => p === undefined) || status.checkpoint !== opened.at) return ignore("snapshot state is not a read-model state");
    this.status = status;
    this.points = new Map(points.map((p) => [p!.vmId, p!]));
    this.position = opened.at;
    this.positionHash = opened.atHash;
    this.persistedAt = opened.at;
    this.knownChecksum = record.checksum;
    return true;
  }
}

/**
 * `qreplica ledger rebuild`: folds every read model from the first event and stores the result,
 * and replaces each relationship's snapshot with the fold of its whole stream (the status model
 * folds every stream with the aggregate's own `evolve`, so that fold is at hand).
 */
export async function rebuildReadModels(store: EventStore, onProgress?: (p: RebuildProgress) => void): Promise<RebuildReport> {
  const started = performance.now();
  const heads = new Map<string, { version: bigint; hash: string }>();
  const models = await LedgerReadModels.fromScratch(store, onProgress, {}, (e) => {
    const vmId = vmIdOfStream(e.stream);
    if (vmId !== undefined) heads.set(vmId, { version: e.version, hash: e.hash });
  });
  await models.persist();
  await store.deleteSnapshots(RELATIONSHIP_SNAPSHOT_PREFIX);
  for (const { rel } of models.statusSnapshot().vms) {
    const head = heads.get(rel.vmId);
    if (!head) continue;
    await store.writeSnapshot(sealSnapshot({ key: snapshotKeyOf(rel.vmId), at: head.version, atHash: head.hash, foldVersion: RELATIONSHIP_FOLD_VERSION, state: rel }));
  }
  return { events: models.eventsFolded, vms: heads.size, position: models.checkpoint.toString(), durationMs: performance.now() - started };
}
