import { QreplicaError } from "../../common/errors.js";
import type { RejectReason } from "../../gen/qreplica/v1/replication.js";
import type { CycleKind, JsonObject, PointGroup } from "../../ledger/index.js";
import type { PointWrite } from "../../storage/index.js";

// What the data plane hands the site's relationships, and how they refuse it.

/** A request the relationship's state forbids, mapped to the data plane's reject reason. */
export class RelationshipRefusal extends QreplicaError {
  readonly code = "RELATIONSHIP_REFUSED" as const;
  constructor(
    readonly reason: RejectReason,
    message: string,
    readonly currentGeneration?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface HelloInput {
  vmId: string;
  primarySiteId: string;
  primaryIdentity: string;
  presentedGeneration: number;
  disks: Array<{ diskId: string; sizeBytes: number }>;
  vmSpec?: JsonObject;
  /** Disks whose change tracking the agent lost, with why (Hello.tracking_lost). */
  trackingLost?: Array<{ diskId: string; code: string; reason: string }>;
  /** "manual": a needed resync waits for `qreplica resync VM` (ResyncApproved in the ledger). */
  resyncMode?: "automatic" | "manual";
  /** Hello.upstream_failover: the primary declares a failover at its own site (extended replication). */
  upstreamFailover?: string;
  /**
   * Hello.forwarded_point_id, from a forwarding site (extended replication): this site's point it
   * last forwarded ("" for none it knows of). Undefined for agents.
   */
  forwardedPointId?: string;
}

/** What the primary sends next: the HelloAck's resume hint. */
export type ResumeKind = "initial" | "incremental" | "resync" | "wait";

export interface HelloAccepted {
  generation: number;
  lastCycleSeq: number;
  needsInitialReplication: boolean;
  seeded?: boolean;
  resume: ResumeKind;
  /** Why a resync is needed (with resume "resync" or "wait"). */
  resyncReason?: string;
}

export interface CommitInput {
  vmId: string;
  seq: number;
  kind: CycleKind;
  generation: number;
  cutoffAt: Date;
  consistency: "application" | "crash";
  /** An application-consistent point was due and the guest could not be frozen: why. */
  quiesceFailure?: string | undefined;
  point: PointWrite;
  dataBytes: number;
  /** dataBytes by disk id (disks that changed nothing may be absent). */
  diskDataBytes?: Record<string, number>;
  zeroBytes: number;
  wireBytes: number;
  extents: number;
  durationMs: number;
  comparedBytes?: number;
  /** By disk id: changed bytes in chunks that did not compress, and wire bytes (the encryption signal). */
  diskCompression?: Record<string, { incompressibleBytes: number; wireBytes: number }>;
  /** The consistency group cut-off the primary cut the cycle in. */
  group?: PointGroup | undefined;
}
