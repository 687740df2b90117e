import type { Logger } from "../../common/logger.js";
import { RejectReason } from "../../gen/qreplica/v1/replication.js";
import {
  InvalidTransitionError,
  OutOfOrderCycleError,
  StaleGenerationError,
  executeCommand,
  type CommandResult,
  type Decide,
  type EventStore,
  type ExecuteCommandOptions,
  type RelationshipState,
} from "../../ledger/index.js";
import type { RetentionSpec } from "../../policy/retentionPlan.js";
import type { ReplicaStorage } from "../../storage/index.js";
import type { RetentionSource } from "../retention.js";
import { RelationshipRefusal } from "./relationshipInputs.js";

export interface RelationshipsOptions {
  /** A VM's retention tiers (see retentionFor). */
  retentionFor: RetentionSource;
  /** The clock retention tiers are measured with; injected by tests. */
  now: () => number;
  /** Points retention must keep for now besides its own holds (extended replication's unsent ones). */
  alsoHeld: (vmId: string, state: RelationshipState) => ReadonlySet<string>;
}

/** What the relationships need to know of their site. */
export interface RelationshipSite {
  siteId: string;
  defaultMaxPoints: number;
  defaultRetention?: RetentionSpec;
}

/**
 * What each part of Relationships (Hello, cycles, commits, retention, reverse) works with: the
 * ledger, replica storage, the site, and the two ways to read and change a relationship.
 */
export interface RelationshipDeps {
  readonly store: EventStore;
  readonly storage: ReplicaStorage;
  readonly site: RelationshipSite;
  readonly logger: Logger;
  readonly options: RelationshipsOptions;
  load(vmId: string): Promise<RelationshipState>;
  exec(vmId: string, decide: Decide, opts?: ExecuteCommandOptions): Promise<CommandResult>;
}

/** A ledger command on the VM's relationship, its domain refusals turned into the data plane's. */
export async function execRelationshipCommand(store: EventStore, vmId: string, decide: Decide, opts: ExecuteCommandOptions = {}): Promise<CommandResult> {
  try {
    return await executeCommand(store, vmId, decide, opts);
  } catch (err) {
    if (err instanceof StaleGenerationError) throw new RelationshipRefusal(RejectReason.REJECT_REASON_STALE_GENERATION, err.message, err.currentGeneration, { cause: err });
    if (err instanceof OutOfOrderCycleError) throw new RelationshipRefusal(RejectReason.REJECT_REASON_OUT_OF_ORDER, err.message, undefined, { cause: err });
    if (err instanceof InvalidTransitionError) throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, err.message, undefined, { cause: err });
    throw err;
  }
}
