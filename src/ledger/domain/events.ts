/**
 * The events of one replication relationship, stored in stream `replication-<vmId>`.
 *
 * Event data is plain JSON because the store hashes the stored bytes and refuses anything that
 * would not read back identically: byte counts and sequence numbers are safe-integer numbers (a
 * disk over 8 PiB is not a concern; bigint is refused by the store), times are ISO-8601 strings.
 *
 * Events are facts and are never rewritten, so a field may be added later only as optional.
 */
import type { NewEvent, RecordedEvent } from "../eventStore.js";
import type { EncryptionBaseline } from "./encryptionSignal.js";
import { UnknownRelationshipEventError } from "./errors.js";
import type { ReplicationStateName } from "./states.js";

export const RELATIONSHIP_STREAM_PREFIX = "replication-";

export function relationshipStream(vmId: string): string {
  return `${RELATIONSHIP_STREAM_PREFIX}${vmId}`;
}

/** The vmId of a relationship stream, `undefined` for any other stream. */
export function vmIdOfStream(stream: string): string | undefined {
  return stream.startsWith(RELATIONSHIP_STREAM_PREFIX) && stream.length > RELATIONSHIP_STREAM_PREFIX.length ? stream.slice(RELATIONSHIP_STREAM_PREFIX.length) : undefined;
}

/** One point per committed cycle, named after it, so storage and ledger agree without a lookup. */
export function pointIdFor(cycleSeq: number): string {
  return `rp-${cycleSeq}`;
}

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export type Consistency = "application" | "crash";
export type CycleKind = "full" | "incremental" | "resync";
export type FailoverKind = "planned" | "unplanned";

export type DrillTrigger = "schedule" | "operator";
export type DrillResult = "verified" | "failed";
/** `running`: QEMU started from the point and its vCPUs run; the others are the policy's `verification.checks`. */
export type DrillCheckName = "running" | "serialPattern" | "guestAgent" | "tcpPort" | "guestCommand";
export type DrillCheckOutcome = { check: DrillCheckName; passed: boolean /** From the drill's start to the check's verdict. */; atMs: number; detail?: string };
export type DiskCompression = { incompressibleBytes: number; wireBytes: number };
export type DiskSpec = { diskId: string; sizeBytes: number };
/** A disk as captured by one point: `imagePath` is that point's own image (base or overlay). */
export type PointDisk = { diskId: string; sizeBytes: number; imagePath: string };
/**
 * The consistency group cut-off a point was cut in: the same `cutoffId` on every member's point of
 * that cut-off; `members` as the primary's agent listed the group; the group's pause in ms.
 */
export type PointGroup = { groupId: string; cutoffId: string; members: string[]; pauseMs?: number };
/** A point's disk with the images that open it, base first, ending with `imagePath`. */
export type ChainDisk = PointDisk & { chain: string[] };

/** Event type -> data. The single source of truth for the union below and the decoder's list. */
export type RelationshipEventData = {
  ReplicationEnabled: {
    vmId: string;
    primarySiteId: string;
    replicaSiteId: string;
    /** Certificate subject CN of the primary's agent: the only peer allowed to send cycles. */
    primaryIdentity: string;
    disks: DiskSpec[];
    /** Opaque to the ledger; the site launches failover VMs from it. */
    vmSpec: JsonObject;
    retention: { maxPoints: number };
    generation: number;
  };
  InitialReplicationStarted: { cycleSeq: number; cutoffAt: string };
  CycleCommitted: {
    cycleSeq: number;
    kind: CycleKind;
    generation: number;
    cutoffAt: string;
    committedAt: string;
    consistency: Consistency;
    /** The primary wanted the guest frozen for this cut-off (an application-consistent point was due) and could not: why. */
    quiesceFailure?: string;
    disks: PointDisk[];
    dataBytes: number;
    /** dataBytes by disk id; absent from cycles recorded before it was kept. */
    diskDataBytes?: Record<string, number>;
    zeroBytes: number;
    wireBytes: number;
    extents: number;
    durationMs: number;
    /** Resynchronisation by comparison: bytes compared by hash; `dataBytes` is what differed. */
    comparedBytes?: number;
    /** Initial replication by media: bytes of disk content imported from the primary's export (none crossed the network). */
    importedBytes?: number;
    /**
     * By disk id: of the disk's dataBytes, those in chunks that did not compress (the encryption
     * signal, encryptionSignal.ts), and the bytes its data took on the wire. Absent from cycles
     * recorded before it was kept; the fold keeps each disk's baseline from it.
     */
    diskCompression?: Record<string, DiskCompression>;
  };
  RecoveryPointCreated: {
    pointId: string;
    cycleSeq: number;
    cutoffAt: string;
    consistency: Consistency;
    disks: PointDisk[];
    /** The policy's lock: until then no command merges, drops or completes the point away. */
    lockedUntil?: string;
    /** Set when the point was cut in a consistency group's cut-off. */
    group?: PointGroup;
  };
  /**
   * Right after its RecoveryPointCreated: the point's changed bytes stopped compressing far above a
   * disk's own baseline (what encrypting ransomware does). `baselines` are those disks' baselines
   * before this point, which a suspect point does not move (the fold restores them).
   */
  RecoveryPointSuspected: {
    pointId: string;
    cycleSeq: number;
    cutoffAt: string;
    disks: { diskId: string; share: number; baselineShare: number }[];
    baselines: Record<string, EncryptionBaseline>;
  };
  /** An operator looked at the suspect points and cleared them (`qreplica points clear-suspect`). */
  SuspectPointsCleared: { pointIds: string[]; clearedBy: string; clearedByRole: string };
  /**
   * A verification drill of `pointId` ended (src/site/drills/): a test failover `testId` on the
   * isolated network and its checks, in order. `verified`: every check passed, the last
   * `timeToVerifiedMs` after the drill started; `failed`: `failedCheck` did not pass (`message` says
   * what was seen), the checks after it were not run. Recorded while the test still held the point.
   */
  VerificationDrillRecorded: {
    drillId: string;
    pointId: string;
    cycleSeq: number;
    cutoffAt: string;
    /** Absent when the test VM could not be launched (the drill then fails its `running` check). */
    testId?: string;
    /** `schedule`: the policy's `verification.every`; `operator`: `qreplica verify`. */
    trigger: DrillTrigger;
    result: DrillResult;
    failedCheck?: DrillCheckName;
    message?: string;
    timeToVerifiedMs?: number;
    checks: DrillCheckOutcome[];
    startedAt: string;
    finishedAt: string;
  };
  InitialReplicationCompleted: { cycleSeq: number; pointId: string };
  CycleFailed: { cycleSeq: number; generation: number; reason: string; message: string };
  /**
   * The primary did not start a due cycle, for `code` (e.g. SCRATCH_SPACE_LOW); recorded once per
   * code while the condition lasts, which the next CycleCommitted ends.
   */
  CycleSkipped: { generation: number; code: string; message: string; skippedAt: string };
  RecoveryPointMergeStarted: { pointId: string; intoPointId: string };
  RecoveryPointMerged: { pointId: string; intoPointId: string; disks: { diskId: string; imagePath: string }[] };
  ResyncRequired: { reason: string };
  /**
   * An operator's go-ahead for the resync of a resync-required VM (`qreplica resync`), kept until
   * that resync completes so that it survives a site restart and an interrupted resync. The caller
   * is also in the event's metadata; it is repeated here because the fold sees only the data, and
   * the ResyncStarted it leads to must name the same caller.
   */
  ResyncApproved: { approvedBy: string; approvedByRole: string };
  ResyncStarted: { cycleSeq: number; cutoffAt: string };
  ResyncCompleted: { cycleSeq: number; pointId: string };
  ReplicationPaused: { reason: string };
  ReplicationResumed: Record<string, never>;
  StaleGenerationRefused: { presentedGeneration: number; currentGeneration: number; peerIdentity: string };
  // Failover events. They were typed before any command decided them and were settled together
  // with their commands (commands/*Failover*.ts), so no ledger holds an earlier shape of them.
  /**
   * A test VM is being built on a throwaway overlay on `pointId`; replication goes on (the
   * relationship's state does not change). `disks` are the images it is built on, per disk: the
   * point's own image and the chain behind it, base first — the overlay's backing chain, which
   * stays untouched (no merge runs) until the test is stopped.
   */
  TestFailoverStarted: { testId: string; pointId: string; startedAt: string; disks: ChainDisk[] };
  /** The test VM is running; `timeToRunningMs` is the measured time from the start (test RTO). */
  TestFailoverRunning: { testId: string; runningAt: string; timeToRunningMs: number };
  TestFailoverStopped: { testId: string; stoppedAt: string; durationMs: number };
  /**
   * Planned failover, step 1: the primary VM was stopped at `primaryStoppedAt` (the primary host's
   * clock, the one that stamps cut-offs) and will send a final cycle; `cycleSeq` is the last cycle
   * recorded when the failover was prepared.
   */
  FailoverPrepared: { cycleSeq: number; preparedAt: string; primaryStoppedAt: string };
  /**
   * `generation` is the new one (the previous + 1). `primaryGeneration` is the lowest generation the
   * old primary's agent may still hold, used if this failover is cancelled (see cancelFailover).
   * `cutoffAt` is the chosen point's: what the failed-over VM has lost is everything after it.
   */
  /** `startVm`: the site launches the VM from the point (absent in events before it was recorded). */
  FailedOver: { pointId: string; generation: number; kind: FailoverKind; cutoffAt: string; primaryGeneration: number; startVm?: boolean };
  /**
   * As Complete-VMFailover: every point but the failed-over one stops being a recovery point.
   * `keptChains` are the images the failed-over VM runs on (its point's chain, base first, which
   * includes the images of the older dropped points); `releasedImages` are the images of the
   * dropped points that are in no kept chain, which storage may delete.
   */
  FailoverCompleted: {
    pointId: string;
    droppedPointIds: string[];
    keptChains: { diskId: string; chain: string[] }[];
    releasedImages: { diskId: string; imagePath: string }[];
  };
  /**
   * The relationship returns to `returnedTo`. `generation` stays where the failover put it; when
   * `primaryGeneration` is lower, the old primary may resume from it (see acknowledgeGeneration).
   */
  FailoverCancelled: { returnedTo: ReplicationStateName; generation: number; primaryGeneration: number };
  /** After a cancelled failover: the primary presented an older generation and was told the current one. */
  GenerationAcknowledged: { peerIdentity: string; presentedGeneration: number; generation: number };
  /** The primary sent a launch description different from the last one: the spec's history. */
  VmSpecChanged: { vmSpec: JsonObject };
  /**
   * The failed-over site becomes the primary; its agent's certificate CN is the new primary identity.
   * `generation` is the failover's, which the reverse relationship on the other site starts at.
   */
  ReverseReplicationStarted: { newPrimarySiteId: string; newPrimaryIdentity: string; newReplicaSiteId: string; generation: number };
  /**
   * On an extended replica (A -> B -> C, at C): the VM failed over at its primary site B, whose
   * agent now replicates the failover VM here and presented `generation`, above this replica's
   * `previousGeneration`, with `reason` (the upstream failover, as B describes it). Older
   * generations are fenced from here on; the relationship needs a resync (the new agent has no
   * change tracking relative to this site's points), which keeps every point.
   */
  PrimaryFailedOverUpstream: { peerIdentity: string; previousGeneration: number; generation: number; reason: string };
  /**
   * Extended replication (A -> B -> C), on B: the VM failed over at C, the site B forwarded its
   * points to, and C now replicates it back here at the failover's `generation` (`qreplica reverse`
   * from C, an operator's word: `approvedBy`). The points are kept; the first cycle is a resync by
   * comparison against the newest one. `previousPrimaryIdentity` (A's agent) is refused as stale.
   */
  PrimaryReplaced: {
    previousPrimarySiteId: string;
    previousPrimaryIdentity: string;
    primarySiteId: string;
    primaryIdentity: string;
    generation: number;
    approvedBy: string;
    approvedByRole: string;
  };
  /**
   * Extended replication (A -> B -> C), on B: a planned failover at C went through this site (the
   * primary's agent stopped the VM and shipped its final cycle here, the final point `pointId` went
   * on to C as `targetPointId`, C was told the primary stopped at `primaryStoppedAt`), so the VM now
   * fails over at `targetSiteId`. The primary (`primaryIdentity`, at `generation`) is refused as
   * stale from here on, which fences its VM; replication waits (paused) for the reverse from C.
   * `requestedBy` is the operator at C who asked, as C reported it ("" when it did not).
   */
  FailedOverDownstream: {
    targetSiteId: string;
    pointId: string;
    targetPointId: string;
    primaryStoppedAt: string;
    stopMethod: string;
    primaryIdentity: string;
    generation: number;
    requestedBy: string;
    requestedByRole: string;
    recordedAt: string;
  };
  /**
   * Extended replication (A -> B -> C), on B: the planned failover at `targetSiteId` that
   * FailedOverDownstream recorded was cancelled there (`toldBy` "target": C said so over the
   * stream B forwards on, naming `cancelledBy` and its generation after the cancel; "operator": an
   * operator here said so). The fence on the primary (`primaryIdentity`) is lifted and replication
   * goes on (replicating); every point is kept.
   */
  DownstreamFailoverCancelled: {
    targetSiteId: string;
    pointId: string;
    primaryIdentity: string;
    toldBy: "target" | "operator";
    cancelledBy: string;
    targetGeneration: number;
    recordedAt: string;
  };
};

export type RelationshipEventType = keyof RelationshipEventData;

export type RelationshipEvent = {
  [K in RelationshipEventType]: { type: K; data: RelationshipEventData[K] };
}[RelationshipEventType];

export type EventOfType<K extends RelationshipEventType> = Extract<RelationshipEvent, { type: K }>;

// `satisfies` makes the compiler fail when an event type is added to the map but not here.
const KNOWN_TYPES = {
  ReplicationEnabled: true,
  InitialReplicationStarted: true,
  CycleCommitted: true,
  RecoveryPointCreated: true,
  RecoveryPointSuspected: true,
  SuspectPointsCleared: true,
  VerificationDrillRecorded: true,
  InitialReplicationCompleted: true,
  CycleFailed: true,
  CycleSkipped: true,
  RecoveryPointMergeStarted: true,
  RecoveryPointMerged: true,
  ResyncRequired: true,
  ResyncApproved: true,
  ResyncStarted: true,
  ResyncCompleted: true,
  ReplicationPaused: true,
  ReplicationResumed: true,
  StaleGenerationRefused: true,
  TestFailoverStarted: true,
  TestFailoverRunning: true,
  TestFailoverStopped: true,
  FailoverPrepared: true,
  FailedOver: true,
  FailoverCompleted: true,
  FailoverCancelled: true,
  GenerationAcknowledged: true,
  VmSpecChanged: true,
  ReverseReplicationStarted: true,
  PrimaryFailedOverUpstream: true,
  PrimaryReplaced: true,
  FailedOverDownstream: true,
  DownstreamFailoverCancelled: true,
} as const satisfies Record<RelationshipEventType, true>;

export const RELATIONSHIP_EVENT_TYPES: readonly RelationshipEventType[] = Object.keys(KNOWN_TYPES) as RelationshipEventType[];

export function isRelationshipEventType(type: string): type is RelationshipEventType {
  return Object.hasOwn(KNOWN_TYPES, type);
}

/** Builds an event with its type checked against its data at compile time. */
export function relationshipEvent<K extends RelationshipEventType>(type: K, data: RelationshipEventData[K]): EventOfType<K> {
  return { type, data } as EventOfType<K>;
}

export function encodeRelationshipEvent(event: RelationshipEvent, metadata?: Record<string, unknown>): NewEvent {
  if (!isRelationshipEventType(event.type)) throw new UnknownRelationshipEventError(String(event.type), "append");
  return { type: event.type, data: event.data as Record<string, unknown>, ...(metadata ? { metadata } : {}) };
}

/**
 * Trusts the payload: it was decided by this code and is protected by the hash chain. Only the
 * type is checked, because folding an event this version does not know would silently produce
 * a wrong state (e.g. a failover written by a newer qreplica).
 */
export function decodeRelationshipEvent(recorded: Pick<RecordedEvent, "type" | "data" | "stream">): RelationshipEvent {
  if (!isRelationshipEventType(recorded.type)) throw new UnknownRelationshipEventError(recorded.type, recorded.stream);
  return { type: recorded.type, data: recorded.data } as RelationshipEvent;
}
