/**
 * The recovery-point catalogue of one VM: which points exist and, per disk, the chain of images
 * (base first) that opens each of them. A fold of the VM's stream, rebuildable at any time.
 *
 * Kept independent of the aggregate's fold on purpose: it is what operators and the failover
 * code read, and it must stay cheap and obviously correct for that one question.
 */
import type { EventStore, RecordedEvent } from "../eventStore.js";
import { decodeRelationshipEvent, relationshipStream, type Consistency, type DiskCompression, type PointDisk, type PointGroup } from "../domain/events.js";

/** Why a point is suspect (RecoveryPointSuspected): per disk, the share of changed bytes that did not compress, and the disk's baseline. */
export type PointSuspicion = readonly { readonly diskId: string; readonly share: number; readonly baselineShare: number }[];

export interface CatalogueDisk {
  readonly diskId: string;
  readonly sizeBytes: number;
  /** This point's own image. */
  readonly imagePath: string;
  /** Images to open, base first, ending with `imagePath`. */
  readonly chain: readonly string[];
}

export interface CataloguePoint {
  readonly pointId: string;
  readonly cycleSeq: number;
  readonly cutoffAt: string;
  readonly consistency: Consistency;
  /** Being merged away: it can no longer be opened or tested. */
  readonly merging: boolean;
  /** Test failovers running on this point. */
  readonly testIds: readonly string[];
  /** The point the VM is failed over to (until the failover is completed or cancelled). */
  readonly failedOver: boolean;
  readonly disks: readonly CatalogueDisk[];
  /** The policy's lock on the point, if it had one (it may have ended). */
  readonly lockedUntil?: string;
  /** Set while the point is suspect (encryption signal) and not cleared. */
  readonly suspect?: PointSuspicion;
  /** The consistency group cut-off the point was cut in. */
  readonly group?: PointGroup;
}

/** What the CycleCommitted event of a point's cycle recorded. */
export interface PointCycleFacts {
  readonly kind: string;
  readonly generation: number;
  readonly committedAt: string;
  readonly dataBytes: number;
  /** By disk id; absent for cycles recorded before it was kept. */
  readonly diskDataBytes?: Readonly<Record<string, number>>;
  readonly wireBytes: number;
  /** By disk id: data bytes that did not compress, and wire bytes; absent for cycles recorded before it was kept. */
  readonly diskCompression?: Readonly<Record<string, DiskCompression>>;
}

interface StoredPoint {
  pointId: string;
  cycleSeq: number;
  cutoffAt: string;
  consistency: Consistency;
  merging: boolean;
  disks: PointDisk[];
  lockedUntil?: string;
  suspect?: { diskId: string; share: number; baselineShare: number }[];
  group?: PointGroup;
}

const PAGE = 1000;

export interface RecoveryPointsSnapshot {
  vmId: string;
  points: StoredPoint[];
  tests: Array<[string, string]>;
  failedOverTo: string | null;
  lastVersion: string | null;
  facts: Array<[string, PointCycleFacts]>;
  committed: { cycleSeq: number; facts: PointCycleFacts } | null;
}

export class RecoveryPointsProjection {
  private points: StoredPoint[] = [];
  private tests = new Map<string, string>(); // testId -> pointId
  private failedOverTo: string | undefined;
  private lastVersion: bigint | undefined;
  /** By pointId, for the points that exist: listing points must not re-read the stream. */
  private facts = new Map<string, PointCycleFacts>();
  /** The last CycleCommitted, until its RecoveryPointCreated (the event after it) arrives. */
  private committed: { cycleSeq: number; facts: PointCycleFacts } | undefined;
  private readonly stream: string;

  constructor(readonly vmId: string) {
    this.stream = relationshipStream(vmId);
  }

  /** Folds the VM's stream from its first event. */
  static async rebuild(store: EventStore, vmId: string): Promise<RecoveryPointsProjection> {
    const projection = new RecoveryPointsProjection(vmId);
    await projection.catchUp(store);
    return projection;
  }

  /** Applies whatever was appended since the last event seen. */
  async catchUp(store: EventStore): Promise<void> {
    for (;;) {
      const fromVersion = this.lastVersion === undefined ? 0n : this.lastVersion + 1n;
      const page = await store.readStream(this.stream, { fromVersion, maxCount: PAGE });
      for (const e of page) this.apply(e);
      if (page.length < PAGE) return;
    }
  }

  /**
   * Ignores other streams and events already applied, so it can be fed straight from a
   * subscription over all relationships, or the same event twice.
   */
  apply(recorded: RecordedEvent): void {
    if (recorded.stream !== this.stream) return;
    if (this.lastVersion !== undefined && recorded.version <= this.lastVersion) return;
    this.lastVersion = recorded.version;
    const event = decodeRelationshipEvent(recorded);
    switch (event.type) {
      case "CycleCommitted": {
        const d = event.data;
        this.committed = {
          cycleSeq: d.cycleSeq,
          facts: {
            kind: d.kind,
            generation: d.generation,
            committedAt: d.committedAt,
            dataBytes: d.dataBytes,
            ...(d.diskDataBytes ? { diskDataBytes: d.diskDataBytes } : {}),
            wireBytes: d.wireBytes,
            ...(d.diskCompression ? { diskCompression: d.diskCompression } : {}),
          },
        };
        return;
      }
      case "RecoveryPointCreated": {
        const d = event.data;
        if (this.committed?.cycleSeq === d.cycleSeq) this.facts.set(d.pointId, this.committed.facts);
        this.committed = undefined;
        this.points.push({
          pointId: d.pointId,
          cycleSeq: d.cycleSeq,
          cutoffAt: d.cutoffAt,
          consistency: d.consistency,
          merging: false,
          disks: d.disks.map((x) => ({ ...x })),
          ...(d.lockedUntil ? { lockedUntil: d.lockedUntil } : {}),
          ...(d.group ? { group: { ...d.group, members: [...d.group.members] } } : {}),
        });
        return;
      }
      case "RecoveryPointSuspected": {
        const p = this.points.find((x) => x.pointId === event.data.pointId);
        if (p) p.suspect = event.data.disks.map((x) => ({ ...x }));
        return;
      }
      case "SuspectPointsCleared": {
        const cleared = new Set(event.data.pointIds);
        for (const p of this.points) if (cleared.has(p.pointId)) delete p.suspect;
        return;
      }
      case "RecoveryPointMergeStarted": {
        const p = this.points.find((x) => x.pointId === event.data.pointId);
        if (p) p.merging = true;
        return;
      }
      case "RecoveryPointMerged": {
        const d = event.data;
        this.points = this.points.filter((x) => x.pointId !== d.pointId);
        this.facts.delete(d.pointId);
        const into = this.points.find((x) => x.pointId === d.intoPointId);
        if (into) {
          const images = new Map(d.disks.map((x) => [x.diskId, x.imagePath]));
          into.disks = into.disks.map((x) => ({ ...x, imagePath: images.get(x.diskId) ?? x.imagePath }));
        }
        return;
      }
      case "TestFailoverStarted":
        this.tests.set(event.data.testId, event.data.pointId);
        return;
      case "TestFailoverStopped":
        this.tests.delete(event.data.testId);
        return;
      case "FailedOver":
        this.failedOverTo = event.data.pointId;
        return;
      case "FailoverCancelled":
        this.failedOverTo = undefined;
        return;
      case "FailoverCompleted":
        // The failed-over point's chain now belongs to the running VM: no recovery points.
        this.points = [];
        this.facts.clear();
        return;
      case "ReverseReplicationStarted":
        // This site is now the primary: the recovery points are the other site's.
        this.points = [];
        this.facts.clear();
        this.failedOverTo = undefined;
        return;
      default:
        return;
    }
  }

  /** The committed cycle's facts of an existing point (undefined for points recorded before them). */
  cycleFacts(pointId: string): PointCycleFacts | undefined {
    return this.facts.get(pointId);
  }

  /**
   * Plain JSON of the projection, for a read-model snapshot (readModels.ts). A field added to this
   * class must be added here and in `fromSnapshot`, with a READ_MODELS_FOLD_VERSION bump.
   */
  toSnapshot(): RecoveryPointsSnapshot {
    return {
      vmId: this.vmId,
      points: this.points,
      tests: [...this.tests],
      failedOverTo: this.failedOverTo ?? null,
      lastVersion: this.lastVersion?.toString() ?? null,
      facts: [...this.facts],
      committed: this.committed ?? null,
    };
  }

  /** The projection a `toSnapshot()` was taken of; undefined when the value is not one. */
  static fromSnapshot(value: unknown): RecoveryPointsProjection | undefined {
    const v = value as Partial<RecoveryPointsSnapshot> | null;
    if (typeof v?.vmId !== "string" || !Array.isArray(v.points) || !Array.isArray(v.tests) || !Array.isArray(v.facts)) return undefined;
    if (v.lastVersion !== null && (typeof v.lastVersion !== "string" || !/^\d+$/.test(v.lastVersion))) return undefined;
    const p = new RecoveryPointsProjection(v.vmId);
    p.points = structuredClone(v.points);
    p.tests = new Map(v.tests);
    p.failedOverTo = v.failedOverTo ?? undefined;
    p.lastVersion = v.lastVersion === null ? undefined : BigInt(v.lastVersion);
    p.facts = new Map(v.facts);
    p.committed = v.committed ?? undefined;
    return p;
  }

  get version(): bigint | undefined {
    return this.lastVersion;
  }

  /** The point the VM was failed over to; kept after completion (the VM runs on its chain). */
  get failedOverPointId(): string | undefined {
    return this.failedOverTo;
  }

  /** Oldest first. A fresh copy: callers may keep or change it. */
  list(): CataloguePoint[] {
    const chains = new Map<string, string[]>();
    return this.points.map((p) => ({
      pointId: p.pointId,
      cycleSeq: p.cycleSeq,
      cutoffAt: p.cutoffAt,
      consistency: p.consistency,
      merging: p.merging,
      testIds: [...this.tests]
        .filter(([, pointId]) => pointId === p.pointId)
        .map(([id]) => id)
        .sort(),
      failedOver: p.pointId === this.failedOverTo,
      ...(p.lockedUntil ? { lockedUntil: p.lockedUntil } : {}),
      ...(p.suspect ? { suspect: p.suspect.map((x) => ({ ...x })) } : {}),
      ...(p.group ? { group: { ...p.group, members: [...p.group.members] } } : {}),
      disks: p.disks.map((d) => {
        // Each point's chain is the previous point's chain plus its own image.
        const chain = [...(chains.get(d.diskId) ?? []), d.imagePath];
        chains.set(d.diskId, chain);
        return { diskId: d.diskId, sizeBytes: d.sizeBytes, imagePath: d.imagePath, chain };
      }),
    }));
  }

  get(pointId: string): CataloguePoint | undefined {
    return this.list().find((p) => p.pointId === pointId);
  }

  latest(): CataloguePoint | undefined {
    return this.list().at(-1);
  }
}
