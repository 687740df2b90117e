/**
 * The replication relationship's state, as the fold `evolve` (relationship.ts) builds it, and its
 * value before the first event. Commands read it; only `evolve` makes a new one.
 */
import type { EncryptionBaseline } from "./encryptionSignal.js";
import type { ChainDisk, Consistency, DiskSpec, DrillCheckName, DrillResult, FailoverKind, JsonObject, PointDisk, PointGroup } from "./events.js";
import type { ReplicationStateName } from "./states.js";

export interface RecoveryPoint {
  readonly pointId: string;
  readonly cycleSeq: number;
  readonly cutoffAt: string;
  readonly consistency: Consistency;
  readonly disks: readonly PointDisk[];
  /** Set while this point is being merged away (into the next one); it can no longer be opened. */
  readonly merging: boolean;
  /** The policy's lock when the point was created: until then it cannot be merged, dropped or completed away. */
  readonly lockedUntil?: string;
  /** The consistency group cut-off the point was cut in. */
  readonly group?: PointGroup;
}

/** A point whose changed bytes stopped compressing (RecoveryPointSuspected), until an operator clears it. */
export interface SuspectPoint {
  readonly pointId: string;
  readonly cycleSeq: number;
  readonly cutoffAt: string;
  readonly disks: readonly { readonly diskId: string; readonly share: number; readonly baselineShare: number }[];
}

/** The last verification drill recorded (VerificationDrillRecorded), as health and status read it. */
export interface DrillSummary {
  readonly drillId: string;
  readonly pointId: string;
  readonly cutoffAt: string;
  readonly result: DrillResult;
  readonly failedCheck?: DrillCheckName;
  readonly message?: string;
  readonly timeToVerifiedMs?: number;
  readonly finishedAt: string;
}

export interface TestFailover {
  readonly testId: string;
  readonly pointId: string;
  readonly startedAt: string;
  /** The images the test VM's overlay is built on (see TestFailoverStarted). */
  readonly disks: readonly ChainDisk[];
  /** Set once the site reports the test VM running. */
  readonly runningAt: string | undefined;
  readonly timeToRunningMs: number | undefined;
}

/** A full or resync cycle announced by its Started event and not yet committed or failed. */
export interface InFlightCycle {
  readonly cycleSeq: number;
  readonly kind: "full" | "resync";
  readonly cutoffAt: string;
}

export interface FailoverInfo {
  readonly kind: FailoverKind;
  /** Undefined while a planned failover is only prepared. */
  readonly pointId: string | undefined;
  /** Where a cancelled failover returns to. */
  readonly previousState: ReplicationStateName;
  /** Planned failover only: when it was prepared, and when the primary VM stopped (primary's clock). */
  readonly preparedAt: string | undefined;
  readonly primaryStoppedAt: string | undefined;
  /** Set by FailedOver: the lowest generation the old primary's agent may still hold. */
  readonly primaryGeneration: number | undefined;
  /** Set by FailedOver: whether the site was to run the VM (undefined in older histories). */
  readonly startVm?: boolean | undefined;
}

/**
 * Open after a cancelled failover until the primary is known to have adopted the current
 * generation (a cycle committed in it): its agent may present any generation from
 * `fromGeneration` up to the current one, and is told the current one (acknowledgeGeneration).
 */
export interface GenerationHandover {
  readonly peerIdentity: string;
  readonly fromGeneration: number;
}

/** Who gave the go-ahead for the pending resync (ResyncApproved). */
export interface ResyncApproval {
  readonly approvedBy: string;
  readonly approvedByRole: string;
}

export interface RelationshipCounters {
  readonly cyclesCommitted: number;
  readonly cyclesFailed: number;
  readonly consecutiveFailures: number;
  readonly dataBytes: number;
  readonly zeroBytes: number;
  readonly wireBytes: number;
  readonly mergesCompleted: number;
  readonly staleGenerationRefusals: number;
  readonly testFailoversStarted: number;
  readonly failovers: number;
  readonly failoversCancelled: number;
}

export interface RelationshipFailure {
  readonly cycleSeq: number;
  readonly reason: string;
  readonly message: string;
}

/** The newest application-consistent point that was due became crash-consistent: the guest could not be frozen. */
export interface QuiesceFailure {
  readonly cycleSeq: number;
  readonly at: string;
  readonly reason: string;
}

/** A condition on the primary that keeps due cycles from starting (CycleSkipped), until a commit. */
export interface SkippedCycles {
  readonly code: string;
  readonly message: string;
  /** When the primary first skipped a cycle for this code. */
  readonly since: string;
}

/** A PrimaryFailedOverUpstream as the fold keeps it. */
export interface UpstreamFailover {
  readonly generation: number;
  readonly previousGeneration: number;
  readonly peerIdentity: string;
  readonly reason: string;
  /** Learnt while paused: the resume asks for the resync (ReplicationResumed clears it). */
  readonly resyncOnResume: boolean;
}

/** A planned failover at the site this one forwards to (FailedOverDownstream): the primary is fenced here. */
export interface DownstreamFailover {
  readonly targetSiteId: string;
  readonly pointId: string;
  readonly targetPointId: string;
  readonly primaryStoppedAt: string;
  /** The primary's identity and generation when it stopped: refused as stale from then on. */
  readonly primaryIdentity: string;
  readonly generation: number;
  readonly requestedBy: string;
  readonly recordedAt: string;
  /** Why the VM no longer replicates here, and the way on (status, health, the forwarder's error). */
  readonly reason: string;
}

export interface RelationshipState {
  readonly vmId: string;
  readonly state: ReplicationStateName;
  /** 0 until enabled; incremented by every failover. */
  readonly generation: number;
  readonly primarySiteId: string | undefined;
  readonly replicaSiteId: string | undefined;
  readonly primaryIdentity: string | undefined;
  /** Latest known sizes: a committed cycle may record a resized disk. */
  readonly disks: readonly DiskSpec[];
  readonly vmSpec: JsonObject;
  readonly retention: { readonly maxPoints: number };
  /** Highest cycle committed or failed; 0 before the first. */
  readonly lastCycleSeq: number;
  /**
   * An incremental cycle was committed since the newest initial replication started: the primary
   * had its change tracking confirmed (it sends incrementals only on a bitmap whose enabling cycle
   * was acked). Until then, the initial replication is not finished as far as the primary knows.
   */
  readonly incrementalSinceInitial: boolean;
  readonly inFlight: InFlightCycle | undefined;
  /** Oldest first; the first point's images are the chain's base. */
  readonly points: readonly RecoveryPoint[];
  /** Keyed by testId: several test failovers may run at once, each on its own throwaway overlay. */
  readonly testFailovers: Readonly<Record<string, TestFailover>>;
  readonly failover: FailoverInfo | undefined;
  readonly generationHandover: GenerationHandover | undefined;
  readonly pauseReason: string | undefined;
  readonly resyncReason: string | undefined;
  /** Set by an operator's go-ahead until the resync completes (or a failover overtakes it). */
  readonly resyncApproval: ResyncApproval | undefined;
  readonly lastCommittedAt: string | undefined;
  readonly lastFailure: RelationshipFailure | undefined;
  readonly cycleSkipped: SkippedCycles | undefined;
  /** Set by a point whose freeze failed; an application-consistent point clears it. */
  readonly quiesceFailure: QuiesceFailure | undefined;
  readonly lastTestFailoverAt: string | undefined;
  /** By disk id: the share of changed bytes that did not compress, over clean points (encryptionSignal.ts). */
  readonly encryptionBaselines: Readonly<Record<string, EncryptionBaseline>>;
  /**
   * Suspect points not cleared yet, oldest first. Kept apart from `points` so that the first
   * suspect cut-off is still known after retention merged that point away.
   */
  readonly suspectPoints: readonly SuspectPoint[];
  /** The last verification drill, whatever its result; undefined before the first (absent from older snapshots). */
  readonly lastDrill?: DrillSummary | undefined;
  /** The last drill that verified a point (health's POINT_NOT_VERIFIED window is measured from its end). */
  readonly lastVerified?: DrillSummary | undefined;
  /**
   * The last failover of the primary upstream (A -> B -> C, the VM failed over at B) this replica
   * learnt of: generations below `generation` are fenced, whatever the identity (absent from older snapshots).
   */
  readonly upstreamFailover?: UpstreamFailover | undefined;
  /**
   * The images the VM of the last completed failover here runs on (its point's chain, base first,
   * per disk): no longer recovery points, but that VM's backing files, so never orphans. Kept
   * through reverse replication, while the VM may still run (absent from older snapshots).
   */
  readonly failoverChainImages?: readonly string[] | undefined;
  /** Primaries a PrimaryReplaced moved away from (absent before the first): refused as stale, never as strangers. */
  readonly formerPrimaryIdentities?: readonly string[];
  /** Set by FailedOverDownstream until a PrimaryReplaced (the reverse from that site) clears it (absent from older snapshots). */
  readonly downstreamFailover?: DownstreamFailover | undefined;
  readonly counters: RelationshipCounters;
}

export function initialRelationshipState(vmId: string): RelationshipState {
  return {
    vmId,
    state: "not-enabled",
    generation: 0,
    primarySiteId: undefined,
    replicaSiteId: undefined,
    primaryIdentity: undefined,
    disks: [],
    vmSpec: {},
    retention: { maxPoints: 1 },
    lastCycleSeq: 0,
    incrementalSinceInitial: false,
    inFlight: undefined,
    points: [],
    testFailovers: {},
    failover: undefined,
    generationHandover: undefined,
    pauseReason: undefined,
    resyncReason: undefined,
    resyncApproval: undefined,
    lastCommittedAt: undefined,
    lastFailure: undefined,
    cycleSkipped: undefined,
    quiesceFailure: undefined,
    lastTestFailoverAt: undefined,
    encryptionBaselines: {},
    suspectPoints: [],
    counters: {
      cyclesCommitted: 0,
      cyclesFailed: 0,
      consecutiveFailures: 0,
      dataBytes: 0,
      zeroBytes: 0,
      wireBytes: 0,
      mergesCompleted: 0,
      staleGenerationRefusals: 0,
      testFailoversStarted: 0,
      failovers: 0,
      failoversCancelled: 0,
    },
  };
}
