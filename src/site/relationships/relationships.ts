import type { Logger } from "../../common/logger.js";
import { loadRelationship, type Decide, type EventStore, type ExecuteCommandOptions, type RelationshipState } from "../../ledger/index.js";
import type { RetentionSpec } from "../../policy/retentionPlan.js";
import type { PointWrite, ReplicaStorage } from "../../storage/index.js";
import type { Caller } from "../controlPlane/caller.js";
import { siteDefaultRetention } from "../retention.js";
import { beginCycle, comparisonImages, type BeginCycleInput } from "./cycleOpening.js";
import { commitPoint, recordFailedCycle, recordSkippedCycle } from "./cycleOutcomes.js";
import { acceptHello } from "./helloAcceptance.js";
import { execRelationshipCommand, type RelationshipDeps, type RelationshipSite, type RelationshipsOptions } from "./relationshipDeps.js";
import type { CommitInput, HelloAccepted, HelloInput } from "./relationshipInputs.js";
import { applyRetention, recoverAfterRestart, retentionFor, retentionStep } from "./retentionSteps.js";
import { prepareReverse, replacePrimaryWith, type ReplacePrimaryInput, type ReverseInput } from "./reverseReplication.js";

export type { RelationshipSite, RelationshipsOptions } from "./relationshipDeps.js";
export { RelationshipRefusal, type CommitInput, type HelloAccepted, type HelloInput, type ResumeKind } from "./relationshipInputs.js";

/**
 * The site's side of every replication relationship: decisions go through the ledger's
 * aggregate (optimistic concurrency), data through replica storage, in the order that keeps
 * invariants 1, 3 and 5: storage durable first, then the ledger, then the ack. Each operation
 * lives with its concern (Hello, opening cycles, their outcomes, retention, reverse); this class
 * is what the site holds.
 */
export class Relationships {
  private readonly deps: RelationshipDeps;

  constructor(store: EventStore, storage: ReplicaStorage, site: RelationshipSite, logger: Logger, options: Partial<RelationshipsOptions> = {}) {
    const complete: RelationshipsOptions = {
      retentionFor: options.retentionFor ?? siteDefaultRetention(site),
      now: options.now ?? Date.now,
      alsoHeld: options.alsoHeld ?? (() => new Set()),
    };
    this.deps = {
      store,
      storage,
      site,
      logger,
      options: complete,
      load: (vmId) => this.load(vmId),
      exec: (vmId: string, decide: Decide, opts?: ExecuteCommandOptions) => execRelationshipCommand(store, vmId, decide, opts),
    };
  }

  async load(vmId: string): Promise<RelationshipState> {
    return (await loadRelationship(this.deps.store, vmId)).state;
  }

  /** See reverseReplication.ts. */
  prepareReverse(caller: Caller, input: ReverseInput): Promise<RelationshipState> {
    return prepareReverse(this.deps, caller, input);
  }

  /** See reverseReplication.ts. */
  replacePrimary(caller: Caller, input: ReplacePrimaryInput): Promise<RelationshipState> {
    return replacePrimaryWith(this.deps, caller, input);
  }

  acceptHello(input: HelloInput): Promise<HelloAccepted> {
    return acceptHello(this.deps, input);
  }

  /** Checks the cycle against the relationship and opens its partial point in storage. */
  beginCycle(input: BeginCycleInput): Promise<PointWrite> {
    return beginCycle(this.deps, input);
  }

  /** See cycleOpening.ts. */
  comparisonImages(vmId: string): Promise<Array<{ diskId: string; imagePath: string; pointSeq?: number }>> {
    return comparisonImages(this.deps, vmId);
  }

  seedsOf(vmId: string): Array<{ diskId: string; imagePath: string }> {
    return this.deps.storage.loadSeeds(vmId);
  }

  commitCycle(input: CommitInput): Promise<{ pointId: string; committedAt: Date }> {
    return commitPoint(this.deps, input);
  }

  recordCycleFailed(input: { vmId: string; seq: number; generation: number; reason: string; message: string }): Promise<void> {
    return recordFailedCycle(this.deps, input);
  }

  /** See cycleOutcomes.ts: returns whether an event was recorded. */
  recordCycleSkipped(input: { vmId: string; generation: number; code: string; message: string; skippedAt: Date }): Promise<boolean> {
    return recordSkippedCycle(this.deps, input);
  }

  /** See retentionSteps.ts. */
  retentionFor(vmId: string, state?: RelationshipState): Promise<RetentionSpec> {
    return retentionFor(this.deps, vmId, state);
  }

  applyRetention(vmId: string): Promise<void> {
    return applyRetention(this.deps, vmId);
  }

  retentionStep(vmId: string): Promise<boolean> {
    return retentionStep(this.deps, vmId);
  }

  /** After a restart: finish interrupted merges, then remove images the ledger does not know. */
  recover(known?: readonly string[]): Promise<string[]> {
    return recoverAfterRestart(this.deps, known);
  }
}
