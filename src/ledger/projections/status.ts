/**
 * Per-VM replication status across every relationship in the ledger: what `qreplica status`
 * and health checks read. A fold of `readAll` over the `replication-*` streams; it reuses the
 * aggregate's `evolve` so the state and generation shown are exactly those commands decide on.
 */
import type { EventStore, RecordedEvent } from "../eventStore.js";
import { RELATIONSHIP_STREAM_PREFIX, decodeRelationshipEvent, vmIdOfStream, type FailoverKind } from "../domain/events.js";
import { evolve, initialRelationshipState, type DrillSummary, type RelationshipState } from "../domain/relationship.js";
import type { ReplicationStateName } from "../domain/states.js";
import { restoreState } from "../domain/relationshipCache.js";
import { lastCleanPoint } from "../domain/pointSafety.js";

export interface StatusError {
  /** A code: a CycleFailed reason, or RESYNC_REQUIRED / STALE_GENERATION. */
  readonly reason: string;
  readonly message: string;
  /** When the ledger recorded it. */
  readonly at: string;
}

export interface VmStatus {
  readonly vmId: string;
  readonly state: ReplicationStateName;
  readonly generation: number;
  readonly primarySiteId: string | undefined;
  readonly replicaSiteId: string | undefined;
  readonly lastPointId: string | undefined;
  readonly lastCutoffAt: string | undefined;
  /** Seconds from the latest point's cut-off to `now`: the data that a failover now would lose. */
  readonly lagSeconds: number | undefined;
  readonly recoveryPoints: number;
  readonly activeTestFailovers: number;
  /** The running test failovers, by testId. */
  readonly testFailovers: readonly StatusTestFailover[];
  /** A failover prepared or in progress, or (failed-over) the one that happened; undefined otherwise. */
  readonly failover: StatusFailover | undefined;
  readonly dataBytes: number;
  readonly wireBytes: number;
  readonly cyclesCommitted: number;
  readonly cyclesFailed: number;
  readonly consecutiveFailures: number;
  readonly staleGenerationRefusals: number;
  /** Why a resync is required or running (the ResyncRequired reason). */
  readonly resyncReason: string | undefined;
  /** Who approved the pending resync (ResyncApproved), until it completes. */
  readonly resyncApprovedBy: string | undefined;
  /** What keeps the primary from starting due cycles (CycleSkipped), until the next commit. */
  readonly cycleSkipped: { readonly code: string; readonly message: string; readonly since: string } | undefined;
  /** The newest application-consistent point that was due was taken crash-consistent: the guest could not be frozen. */
  readonly quiesceFailure: { readonly cycleSeq: number; readonly at: string; readonly reason: string } | undefined;
  /** Why replication is paused. */
  readonly pauseReason: string | undefined;
  /** Suspect points not cleared (encryption signal), oldest first; empty when none. */
  readonly suspectPoints: readonly {
    readonly pointId: string;
    readonly cycleSeq: number;
    readonly cutoffAt: string;
    readonly disks: readonly { readonly diskId: string; readonly share: number; readonly baselineShare: number }[];
  }[];
  /** While a suspect point stands: the newest point before the first one (`failover --point last-clean`). */
  readonly lastCleanPointId: string | undefined;
  /** The most recent problem; kept after recovery, with its time, as Hyper-V shows the last error. */
  readonly lastError: StatusError | undefined;
  /** The last verification drill, and the last one that verified a point (health's POINT_NOT_VERIFIED). */
  readonly lastDrill?: DrillSummary | undefined;
  readonly lastVerified?: DrillSummary | undefined;
}

export interface StatusTestFailover {
  readonly testId: string;
  readonly pointId: string;
  readonly startedAt: string;
  /** Undefined until the site reports the test VM running. */
  readonly runningAt: string | undefined;
  readonly timeToRunningMs: number | undefined;
}

export interface StatusFailover {
  readonly kind: FailoverKind;
  /** Undefined while a planned failover is only prepared. */
  readonly pointId: string | undefined;
  /** The planned failover's primary stop time, which the final point must reach. */
  readonly primaryStoppedAt: string | undefined;
}

export interface StatusSnapshot {
  position: string;
  vms: Array<{ rel: RelationshipState; lastError: StatusError | undefined }>;
}

/**
 * Stored as it is in the read-model snapshot (readModels.ts): keep it plain JSON (no Map, Date or
 * bigint), and bump READ_MODELS_FOLD_VERSION when `apply` changes what it folds.
 */
interface Entry {
  rel: RelationshipState;
  lastError: StatusError | undefined;
}

const PAGE = 1000;

export class StatusProjection {
  private readonly vms = new Map<string, Entry>();
  private position = 0n;

  /** Folds every relationship from the first event of the ledger. */
  static async rebuild(store: EventStore): Promise<StatusProjection> {
    const projection = new StatusProjection();
    await projection.catchUp(store);
    return projection;
  }

  async catchUp(store: EventStore): Promise<void> {
    for (;;) {
      const page = await store.readAll({ fromPosition: this.position, maxCount: PAGE, streamPrefix: RELATIONSHIP_STREAM_PREFIX });
      for (const e of page) this.apply(e);
      if (page.length < PAGE) return;
    }
  }

  /** The global position of the last event applied: a checkpoint for `subscribe({fromPosition})`. */
  get checkpoint(): bigint {
    return this.position;
  }

  /** Ignores other streams and events at or before the checkpoint (safe to feed twice). */
  apply(recorded: RecordedEvent): void {
    if (recorded.globalPosition <= this.position) return;
    // Advanced for ignored events too, so the checkpoint never falls behind what was seen.
    this.position = recorded.globalPosition;
    const vmId = vmIdOfStream(recorded.stream);
    if (vmId === undefined) return;
    const event = decodeRelationshipEvent(recorded);
    const entry = this.vms.get(vmId) ?? { rel: initialRelationshipState(vmId), lastError: undefined };
    const at = recorded.recordedAt.toISOString();
    let lastError = entry.lastError;
    if (event.type === "CycleFailed") {
      lastError = { reason: event.data.reason, message: `cycle ${event.data.cycleSeq}: ${event.data.message}`, at };
    } else if (event.type === "ResyncRequired") {
      lastError = { reason: "RESYNC_REQUIRED", message: event.data.reason, at };
    } else if (event.type === "CycleSkipped") {
      lastError = { reason: event.data.code, message: `cycles skipped by the primary: ${event.data.message}`, at };
    } else if (event.type === "StaleGenerationRefused") {
      const d = event.data;
      lastError = {
        reason: "STALE_GENERATION",
        message: `refused ${d.peerIdentity} presenting generation ${d.presentedGeneration} (current ${d.currentGeneration})`,
        at,
      };
    }
    this.vms.set(vmId, { rel: evolve(entry.rel, event), lastError });
  }

  /** Plain JSON of the whole projection, for a read-model snapshot (readModels.ts). */
  toSnapshot(): StatusSnapshot {
    return { position: this.position.toString(), vms: [...this.vms.values()] };
  }

  /** The projection a `toSnapshot()` was taken of; undefined when the value is not one. */
  static fromSnapshot(value: unknown): StatusProjection | undefined {
    const v = value as Partial<StatusSnapshot> | null;
    if (typeof v?.position !== "string" || !/^\d+$/.test(v.position) || !Array.isArray(v.vms)) return undefined;
    const projection = new StatusProjection();
    projection.position = BigInt(v.position);
    for (const entry of v.vms as Array<Partial<Entry> & { rel?: { vmId?: unknown } }>) {
      const vmId = entry?.rel?.vmId;
      const rel = typeof vmId === "string" ? restoreState(vmId, entry.rel) : undefined;
      if (!rel) return undefined;
      // Every field as stored, so one added to Entry survives a restart without a change here.
      projection.vms.set(rel.vmId, { ...(entry as Entry), rel });
    }
    return projection;
  }

  /** The VMs that have a relationship stream, sorted. */
  vmIds(): string[] {
    return [...this.vms.keys()].sort();
  }

  get(vmId: string, now: Date): VmStatus | undefined {
    const entry = this.vms.get(vmId);
    return entry && toStatus(entry, now);
  }

  /** Every VM that has a relationship stream, sorted by vmId. */
  list(now: Date): VmStatus[] {
    return [...this.vms.keys()].sort().map((vmId) => toStatus(this.vms.get(vmId)!, now));
  }
}

function toStatus({ rel, lastError }: Entry, now: Date): VmStatus {
  const last = rel.points.at(-1);
  const lagMs = last ? now.getTime() - Date.parse(last.cutoffAt) : undefined;
  const c = rel.counters;
  return {
    vmId: rel.vmId,
    state: rel.state,
    generation: rel.generation,
    primarySiteId: rel.primarySiteId,
    replicaSiteId: rel.replicaSiteId,
    lastPointId: last?.pointId,
    lastCutoffAt: last?.cutoffAt,
    // Clamped: a replica clock slightly behind the primary's must not show negative lag.
    lagSeconds: lagMs === undefined ? undefined : Math.max(0, lagMs) / 1000,
    recoveryPoints: rel.points.length,
    activeTestFailovers: Object.keys(rel.testFailovers).length,
    testFailovers: Object.values(rel.testFailovers)
      .map((t) => ({ testId: t.testId, pointId: t.pointId, startedAt: t.startedAt, runningAt: t.runningAt, timeToRunningMs: t.timeToRunningMs }))
      .sort((a, b) => (a.testId < b.testId ? -1 : a.testId > b.testId ? 1 : 0)),
    failover: rel.failover && { kind: rel.failover.kind, pointId: rel.failover.pointId, primaryStoppedAt: rel.failover.primaryStoppedAt },
    dataBytes: c.dataBytes,
    wireBytes: c.wireBytes,
    cyclesCommitted: c.cyclesCommitted,
    cyclesFailed: c.cyclesFailed,
    consecutiveFailures: c.consecutiveFailures,
    staleGenerationRefusals: c.staleGenerationRefusals,
    resyncReason: rel.resyncReason,
    resyncApprovedBy: rel.resyncApproval?.approvedBy,
    cycleSkipped: rel.cycleSkipped && { code: rel.cycleSkipped.code, message: rel.cycleSkipped.message, since: rel.cycleSkipped.since },
    quiesceFailure: rel.quiesceFailure && { cycleSeq: rel.quiesceFailure.cycleSeq, at: rel.quiesceFailure.at, reason: rel.quiesceFailure.reason },
    pauseReason: rel.pauseReason,
    suspectPoints: rel.suspectPoints.map((p) => ({ pointId: p.pointId, cycleSeq: p.cycleSeq, cutoffAt: p.cutoffAt, disks: p.disks.map((d) => ({ ...d })) })),
    lastCleanPointId: rel.suspectPoints.length > 0 ? lastCleanPoint(rel)?.pointId : undefined,
    lastError,
    lastDrill: rel.lastDrill,
    lastVerified: rel.lastVerified,
  };
}
