import { rmSync } from "node:fs";
import { faultPoint } from "../common/faultPoints.js";
import type { RetentionSpec } from "../policy/retentionPlan.js";
import { finishMerge, nextMerge, siteDefaultRetention, type RetentionSource } from "./retention.js";
import type { Logger } from "../common/logger.js";
import { RejectReason } from "../gen/qreplica/v1/replication.js";
import {
  InvalidTransitionError,
  OutOfOrderCycleError,
  RELATIONSHIP_STREAM_PREFIX,
  StaleGenerationError,
  UpstreamFailoverRefusedError,
  commitCycle,
  continuesInitialReplication,
  completeMerge,
  enableReplication,
  executeCommand,
  failoverOverCancelledOne,
  failCycle,
  loadRelationship,
  pointIdFor,
  markResyncRequired,
  replacePrimary,
  recordCycleSkipped,
  resyncGoAhead,
  resyncStartedMetadata,
  startResync,
  startInitialReplication,
  startMerge,
  updateVmSpec,
  vmIdOfStream,
  type CycleKind,
  type Decide,
  type ExecuteCommandOptions,
  type JsonObject,
  type EventStore,
  type RelationshipState,
} from "../ledger/index.js";
import type { PointWrite, ReplicaStorage } from "../storage/index.js";
import { imageInfo } from "../qemu/processes/index.js";
import { actorMetadata, type Caller } from "./controlPlane/caller.js";
import { primaryFailedOverDownstream, settleGeneration, upstreamFailoverAfterFailoverHere } from "./helloGenerations.js";
import { RelationshipRefusal, type CommitInput, type HelloAccepted, type HelloInput } from "./relationshipInputs.js";

export interface RelationshipsOptions {
  /** A VM's retention tiers (see retentionFor). */
  retentionFor: RetentionSource;
  /** The clock retention tiers are measured with; injected by tests. */
  now: () => number;
  /** Points retention must keep for now besides its own holds (extended replication's unsent ones). */
  alsoHeld: (vmId: string, state: RelationshipState) => ReadonlySet<string>;
}

/** The states in which this site runs retention on its chains (as startMerge allows). */
const RETENTION_STATES: readonly string[] = ["replicating", "paused", "resync-required", "resynchronising"];

export { RelationshipRefusal, type CommitInput, type HelloAccepted, type HelloInput, type ResumeKind } from "./relationshipInputs.js";

/**
 * The site's side of every replication relationship: decisions go through the ledger's
 * aggregate (optimistic concurrency), data through replica storage, in the order that keeps
 * invariants 1, 3 and 5: storage durable first, then the ledger, then the ack.
 */
export class Relationships {
  constructor(
    private readonly store: EventStore,
    private readonly storage: ReplicaStorage,
    private readonly site: { siteId: string; defaultMaxPoints: number; defaultRetention?: RetentionSpec },
    private readonly logger: Logger,
    options: Partial<RelationshipsOptions> = {},
  ) {
    this.options = { retentionFor: options.retentionFor ?? siteDefaultRetention(site), now: options.now ?? Date.now, alsoHeld: options.alsoHeld ?? (() => new Set()) };
  }

  private readonly options: RelationshipsOptions;

  async load(vmId: string): Promise<RelationshipState> {
    return (await loadRelationship(this.store, vmId)).state;
  }

  /**
   * Reverse replication, on the old primary's site: the VM's new primary replicates here at the
   * generation of the failover, onto the old disks (seeds) so that only differing chunks travel.
   */
  async prepareReverse(
    caller: Caller,
    input: {
      vmId: string;
      generation: number;
      primarySiteId: string;
      primaryIdentity: string;
      disks: Array<{ diskId: string; sizeBytes: number }>;
      seeds: Array<{ diskId: string; imagePath: string }>;
      vmSpec?: JsonObject;
    },
  ): Promise<RelationshipState> {
    for (const seed of input.seeds) await this.storage.checkSeed(seed.diskId, seed.imagePath);
    const current = await this.load(input.vmId);
    if (current.state === "ready-for-initial-replication" && current.generation === input.generation && current.primaryIdentity === input.primaryIdentity) {
      // Already prepared by an earlier 'qreplica reverse' that failed later on: run it again.
      this.storage.saveSeeds(input.vmId, input.seeds);
      return current;
    }
    this.storage.saveSeeds(input.vmId, input.seeds);
    // After a completed failover the new primary lists no points; the seeds tell the disk sizes.
    const disks = input.disks.length
      ? input.disks
      : await Promise.all(input.seeds.map(async (s) => ({ diskId: s.diskId, sizeBytes: (await imageInfo(s.imagePath))["virtual-size"] })));
    return (
      await this.exec(
        input.vmId,
        (s) =>
          enableReplication(s, {
            primarySiteId: input.primarySiteId,
            replicaSiteId: this.site.siteId,
            primaryIdentity: input.primaryIdentity,
            disks,
            vmSpec: input.vmSpec,
            retention: { maxPoints: this.site.defaultMaxPoints },
            generation: input.generation,
          }),
        { metadata: actorMetadata(caller) },
      )
    ).newState;
  }

  /**
   * Reverse replication from the site this one forwarded the VM to (extended replication): that
   * site becomes the primary at its failover's generation, the points stay (see replacePrimary).
   */
  async replacePrimary(caller: Caller, input: { vmId: string; generation: number; primarySiteId: string; primaryIdentity: string }): Promise<RelationshipState> {
    const { newState } = await this.exec(
      input.vmId,
      (s) =>
        replacePrimary(s, {
          primarySiteId: input.primarySiteId,
          primaryIdentity: input.primaryIdentity,
          generation: input.generation,
          approvedBy: caller.identity,
          approvedByRole: caller.role,
        }),
      { metadata: actorMetadata(caller) },
    );
    this.logger.info(
      { vm: input.vmId, primary: input.primarySiteId, generation: newState.generation },
      "the VM's primary is now the site it failed over to; its first cycle is a resync against the newest point",
    );
    return newState;
  }

  async acceptHello(input: HelloInput): Promise<HelloAccepted> {
    const { vmId } = input;
    let state = await this.load(vmId);
    if (state.state === "not-enabled" && input.presentedGeneration > 0) {
      // A primary that believes in a generation this site never had: a reverse replication not yet prepared here.
      throw new RelationshipRefusal(
        RejectReason.REJECT_REASON_UNKNOWN_VM,
        `VM ${vmId} has no relationship on this site, but the primary presents generation ${input.presentedGeneration}: prepare the reverse replication here first ('qreplica reverse ${vmId}')`,
      );
    }
    if (state.state === "not-enabled") {
      state = (
        await this.exec(vmId, (s) =>
          enableReplication(s, {
            primarySiteId: input.primarySiteId,
            replicaSiteId: this.site.siteId,
            primaryIdentity: input.primaryIdentity,
            disks: input.disks,
            vmSpec: input.vmSpec,
            retention: { maxPoints: this.site.defaultMaxPoints },
          }),
        )
      ).newState;
    } else {
      const downstream = await primaryFailedOverDownstream(this.store, this.logger, state, {
        vmId,
        presentedGeneration: input.presentedGeneration,
        peerIdentity: input.primaryIdentity,
      });
      if (downstream) throw new RelationshipRefusal(RejectReason.REJECT_REASON_STALE_GENERATION, downstream, state.generation);
      if (state.primaryIdentity !== input.primaryIdentity && state.formerPrimaryIdentities?.includes(input.primaryIdentity) && input.presentedGeneration < state.generation) {
        // A primary another site took over from (extended replication's reverse): it is stale, so
        // its agent fences its VM, rather than a stranger refused as unauthorized.
        state = await this.settleGeneration(input, state);
      }
      if (state.primaryIdentity !== input.primaryIdentity) {
        throw new RelationshipRefusal(
          RejectReason.REJECT_REASON_UNAUTHORIZED,
          `VM ${vmId} is replicated here by primary '${state.primaryIdentity}', not '${input.primaryIdentity}'`,
        );
      }
      const fenced = await upstreamFailoverAfterFailoverHere(this.store, this.logger, state, {
        vmId,
        presentedGeneration: input.presentedGeneration,
        peerIdentity: input.primaryIdentity,
        ...(input.upstreamFailover ? { upstreamFailover: input.upstreamFailover } : {}),
      });
      if (fenced) throw new RelationshipRefusal(RejectReason.REJECT_REASON_STALE_GENERATION, fenced, state.generation);
      const overCancelled =
        input.upstreamFailover !== undefined &&
        failoverOverCancelledOne(state, { presentedGeneration: input.presentedGeneration, peerIdentity: input.primaryIdentity, reason: input.upstreamFailover });
      if (input.presentedGeneration !== state.generation || overCancelled) state = await this.settleGeneration(input, state);
    }
    if (input.vmSpec && state.state !== "not-enabled") {
      // The spec's history: a changed launch description is recorded, an unchanged one is not.
      state = (await this.exec(vmId, (s) => updateVmSpec(s, { vmSpec: input.vmSpec! }))).newState;
    }
    const needsInitialReplication = state.points.length === 0 || state.state === "ready-for-initial-replication" || state.state === "initial-replication-in-progress";
    const seeded = needsInitialReplication && this.storage.loadSeeds(vmId).length > 0;
    const base = { generation: state.generation, lastCycleSeq: state.lastCycleSeq, needsInitialReplication, seeded };
    if (needsInitialReplication) return { ...base, resume: seeded ? "resync" : "initial" };
    state = await this.recordTrackingLost(input, state);
    state = await this.recordForwardingMismatch(input, state);
    if (state.state === "paused") return { ...base, resume: "wait" };
    if (state.state === "resync-required" || state.state === "resynchronising") {
      // The operator's go-ahead is in the ledger: it outlives the connection it was given in and this
      // process. An interrupted initial replication needs none (resyncGoAhead says why).
      const resume = resyncGoAhead(state, { lost: input.trackingLost ?? [], mode: input.resyncMode ?? "automatic" });
      return { ...base, resume, resyncReason: state.resyncReason };
    }
    return { ...base, resume: "incremental" };
  }

  /**
   * A Hello presenting another generation than the relationship's: accepted for a cancelled
   * failover's handover or a primary that lost its state, else refused as stale (the agent
   * fences its VM: only a real failover leads here).
   */
  private async settleGeneration(input: HelloInput, state: RelationshipState): Promise<RelationshipState> {
    const settled = await settleGeneration(this.store, this.logger, {
      vmId: input.vmId,
      presentedGeneration: input.presentedGeneration,
      peerIdentity: input.primaryIdentity,
      ...(input.upstreamFailover ? { upstreamFailover: input.upstreamFailover } : {}),
    }).catch((err: unknown) => {
      if (err instanceof UpstreamFailoverRefusedError) throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, err.message, state.generation);
      throw err;
    });
    if (settled) return settled;
    throw new RelationshipRefusal(
      RejectReason.REJECT_REASON_STALE_GENERATION,
      `VM ${input.vmId}: generation ${input.presentedGeneration} is stale, the relationship is at generation ${state.generation}. ` +
        `This primary is no longer authoritative (a failover happened); do not resume its VM`,
      state.generation,
    );
  }

  /** The agent lost change tracking of some disks: the replica no longer knows what changed. */
  private async recordTrackingLost(input: HelloInput, state: RelationshipState): Promise<RelationshipState> {
    const lost = input.trackingLost ?? [];
    if (lost.length === 0 || (state.state !== "replicating" && state.state !== "resynchronising")) return state;
    const reason = lost.map((l) => `${l.diskId}: ${l.code}${l.reason ? ` (${l.reason})` : ""}`).join("; ");
    const { newState } = await this.exec(input.vmId, (s) => markResyncRequired(s, { reason }));
    if (continuesInitialReplication(newState, lost)) {
      this.logger.warn(
        { vm: input.vmId, reason },
        "the initial replication's ack never reached the primary: it goes on by comparison with what this site holds, without an operator",
      );
    } else {
      this.logger.warn({ vm: input.vmId, reason }, "the primary lost change tracking: resync required");
    }
    return newState;
  }

  /**
   * A forwarding site builds each incremental on the point it last forwarded here (its changes since
   * then, which also cover any later point of its own this site committed without its record). When
   * this site does not hold that point (older points restored here) or the forwarder names none
   * while points are here (it lost its record), the changes would land on the wrong image: a
   * resync by comparison instead.
   */
  private async recordForwardingMismatch(input: HelloInput, state: RelationshipState): Promise<RelationshipState> {
    const id = input.forwardedPointId;
    const newest = state.points.at(-1);
    if (id === undefined || !newest || state.state !== "replicating" || state.points.some((p) => p.pointId === id)) return state;
    const reason = id
      ? `site ${input.primarySiteId} last forwarded point ${id} of VM ${input.vmId} here, which this site does not hold (newest ${newest.pointId}): resync by comparison against it`
      : `site ${input.primarySiteId} holds no record of forwarding VM ${input.vmId} here, but this site holds its points (newest ${newest.pointId}): resync by comparison against it`;
    const { newState } = await this.exec(input.vmId, (s) => markResyncRequired(s, { reason }));
    this.logger.warn({ vm: input.vmId, reason }, "the forwarding site cannot build on this site's points: resync required");
    return newState;
  }

  /** Checks the cycle against the relationship and opens its partial point in storage. */
  async beginCycle(input: {
    vmId: string;
    seq: number;
    kind: CycleKind;
    generation: number;
    cutoffAt: Date;
    disks: Array<{ diskId: string; sizeBytes: number }>;
  }): Promise<PointWrite> {
    const { vmId, seq } = input;
    let state = await this.load(vmId);
    if (input.generation !== state.generation) {
      throw new RelationshipRefusal(RejectReason.REJECT_REASON_STALE_GENERATION, `generation ${input.generation} is stale (current ${state.generation})`, state.generation);
    }
    if (input.kind === "resync" && state.points.length === 0) {
      // The first point of a reverse replication: a full point over the seeds.
      const seeds = this.storage.loadSeeds(vmId);
      if (state.state === "initial-replication-in-progress" && state.inFlight && state.inFlight.cycleSeq !== seq) {
        const stale = state.inFlight.cycleSeq;
        await this.exec(vmId, (s) => failCycle(s, { cycleSeq: stale, generation: s.generation, reason: "INTERRUPTED", message: "superseded by a new resynchronisation" }));
      }
      await this.exec(vmId, (s) => startInitialReplication(s, { cycleSeq: seq, cutoffAt: input.cutoffAt.toISOString(), generation: input.generation }));
      return this.storage.beginPoint(
        vmId,
        seq,
        input.disks.map((d) => {
          const seedImage = seeds.find((x) => x.diskId === d.diskId)?.imagePath;
          // Over a seed, the hashes start from the seed's, which the comparison computes.
          return { diskId: d.diskId, sizeBytes: d.sizeBytes, seedImage, hashBase: seedImage ? { kind: "pending" as const } : { kind: "empty" as const } };
        }),
      );
    }
    if (input.kind === "resync") return this.beginResync(input, state);
    if (input.kind === "full") {
      if (state.state === "initial-replication-in-progress" && state.inFlight && state.inFlight.cycleSeq !== seq) {
        // An initial replication interrupted by a crash of either side: record it as failed first.
        const stale = state.inFlight.cycleSeq;
        state = (
          await this.exec(vmId, (s) => failCycle(s, { cycleSeq: stale, generation: s.generation, reason: "INTERRUPTED", message: "superseded by a new initial replication" }))
        ).newState;
      }
      await this.exec(vmId, (s) => startInitialReplication(s, { cycleSeq: seq, cutoffAt: input.cutoffAt.toISOString(), generation: input.generation }));
      return this.storage.beginPoint(
        vmId,
        seq,
        input.disks.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes, hashBase: { kind: "empty" as const } })),
      );
    }
    if (input.kind !== "incremental") throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, `${input.kind} cycles are not supported yet`);
    if (state.state !== "replicating") {
      throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, `VM ${vmId} is in state ${state.state}; incremental cycles need replicating`);
    }
    if (seq <= state.lastCycleSeq) {
      throw new RelationshipRefusal(RejectReason.REJECT_REASON_OUT_OF_ORDER, `cycle ${seq} is not after the last cycle ${state.lastCycleSeq}`);
    }
    const latest = state.points[state.points.length - 1];
    if (!latest) throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, `VM ${vmId} has no recovery point to build on`);
    const disks = input.disks.map((d) => {
      const parent = latest.disks.find((p) => p.diskId === d.diskId);
      if (!parent) throw new RelationshipRefusal(RejectReason.REJECT_REASON_UNKNOWN_DISK, `disk '${d.diskId}' is not replicated for VM ${vmId}`);
      return { diskId: d.diskId, sizeBytes: d.sizeBytes, parentImage: parent.imagePath, hashBase: { kind: "point" as const, seq: latest.cycleSeq } };
    });
    return this.storage.beginPoint(vmId, seq, disks);
  }

  /**
   * A resync after the primary lost change tracking: one more point over the newest one, holding
   * the chunks that differ from it; every older point stays as it was.
   */
  private async beginResync(
    input: { vmId: string; seq: number; generation: number; cutoffAt: Date; disks: Array<{ diskId: string; sizeBytes: number }> },
    state: RelationshipState,
  ): Promise<PointWrite> {
    const { vmId, seq } = input;
    if (state.state === "resynchronising" && state.inFlight && state.inFlight.cycleSeq !== seq) {
      const stale = state.inFlight.cycleSeq;
      state = (await this.exec(vmId, (s) => failCycle(s, { cycleSeq: stale, generation: s.generation, reason: "INTERRUPTED", message: "superseded by a new resynchronisation" })))
        .newState;
    }
    const latest = state.points[state.points.length - 1];
    if (!latest) throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, `VM ${vmId} has no recovery point to resynchronise against`);
    const disks = input.disks.map((d) => {
      const parent = latest.disks.find((p) => p.diskId === d.diskId);
      if (!parent) throw new RelationshipRefusal(RejectReason.REJECT_REASON_UNKNOWN_DISK, `disk '${d.diskId}' is not replicated for VM ${vmId}`);
      // The comparison hashes (the parent's) become this point's base as they are sent.
      return { diskId: d.diskId, sizeBytes: d.sizeBytes, parentImage: parent.imagePath, hashBase: { kind: "pending" as const } };
    });
    // An operator's go-ahead (ResyncApproved) is named by the ResyncStarted it leads to, taken from
    // the state the command decides on: an approval may land after `state` was read.
    await this.exec(vmId, (s) => startResync(s, { cycleSeq: seq, cutoffAt: input.cutoffAt.toISOString(), generation: input.generation }), { metadata: resyncStartedMetadata });
    return this.storage.beginPoint(vmId, seq, disks);
  }

  /**
   * What a resync compares against, per disk: the newest point's image read through its backing
   * chain (that point's full content), or for a reverse replication's first point the seed.
   */
  async comparisonImages(vmId: string): Promise<Array<{ diskId: string; imagePath: string; pointSeq?: number }>> {
    const state = await this.load(vmId);
    const latest = state.points.filter((p) => !p.merging).at(-1) ?? state.points.at(-1);
    if (state.state === "resynchronising" && latest) return latest.disks.map((d) => ({ diskId: d.diskId, imagePath: d.imagePath, pointSeq: latest.cycleSeq }));
    return this.storage.loadSeeds(vmId);
  }

  seedsOf(vmId: string): Array<{ diskId: string; imagePath: string }> {
    return this.storage.loadSeeds(vmId);
  }

  async commitCycle(input: CommitInput): Promise<{ pointId: string; committedAt: Date }> {
    const images = await input.point.commit();
    faultPoint("crash-after-rename-before-ledger");
    const committedAt = new Date();
    // The lock in force at the commit is recorded with the point: a later policy change cannot shorten it.
    const lockSeconds = (await this.retentionFor(input.vmId)).lockSeconds;
    const lockedUntil = lockSeconds ? new Date(input.cutoffAt.getTime() + lockSeconds * 1000).toISOString() : undefined;
    try {
      await this.exec(input.vmId, (s) =>
        commitCycle(s, {
          cycleSeq: input.seq,
          // A seeded first point completes the initial replication like a full one.
          kind: input.kind === "resync" && s.state === "initial-replication-in-progress" ? "full" : input.kind,
          generation: input.generation,
          cutoffAt: input.cutoffAt.toISOString(),
          committedAt: committedAt.toISOString(),
          consistency: input.consistency,
          ...(input.quiesceFailure ? { quiesceFailure: input.quiesceFailure } : {}),
          disks: images.disks.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes, imagePath: d.imagePath })),
          dataBytes: input.dataBytes,
          ...(input.diskDataBytes ? { diskDataBytes: input.diskDataBytes } : {}),
          zeroBytes: input.zeroBytes,
          wireBytes: input.wireBytes,
          extents: input.extents,
          durationMs: input.durationMs,
          comparedBytes: input.comparedBytes,
          ...(input.diskCompression && input.diskDataBytes ? { diskCompression: input.diskCompression } : {}),
          ...(lockedUntil ? { lockedUntil } : {}),
          ...(input.group ? { group: input.group } : {}),
        }),
      );
    } catch (err) {
      // Not in the ledger, so not a point: the images must go (a restart would remove them too).
      for (const d of images.disks) {
        rmSync(d.imagePath, { force: true });
        if (d.chunkHashPath) await this.storage.indexes.forget(d.chunkHashPath, `${d.chunkHashPath}.partial`);
      }
      throw err;
    }
    this.storage.pruneChunkHashes(input.vmId, input.seq);
    return { pointId: pointIdFor(input.seq), committedAt };
  }

  async recordCycleFailed(input: { vmId: string; seq: number; generation: number; reason: string; message: string }): Promise<void> {
    const state = await this.load(input.vmId);
    if (state.state === "not-enabled" || input.generation !== state.generation) return;
    if (state.state !== "initial-replication-in-progress" && input.seq <= state.lastCycleSeq) return;
    await this.exec(input.vmId, (s) => failCycle(s, { cycleSeq: input.seq, generation: input.generation, reason: input.reason, message: input.message.slice(0, 2000) }));
  }

  /**
   * The primary did not start a due cycle (its scratch is nearly full, say). A report of another
   * generation is a stale primary's and is ignored; a repeated code records nothing (once per
   * code while it lasts). Returns whether an event was recorded.
   */
  async recordCycleSkipped(input: { vmId: string; generation: number; code: string; message: string; skippedAt: Date }): Promise<boolean> {
    const state = await this.load(input.vmId);
    if (state.state === "not-enabled" || input.generation !== state.generation) return false;
    const { events } = await this.exec(input.vmId, (s) =>
      recordCycleSkipped(s, { generation: input.generation, code: input.code, message: input.message, skippedAt: input.skippedAt.toISOString() }),
    );
    if (events.length) this.logger.warn({ vm: input.vmId, code: input.code, message: input.message }, "the primary skips its cycles");
    return events.length > 0;
  }

  /**
   * This VM's retention: the one input the VM's effective policy replaces (see retention.ts).
   * Until then the site's default, else the relationship's own point count.
   */
  async retentionFor(vmId: string, state?: RelationshipState): Promise<RetentionSpec> {
    return this.options.retentionFor(vmId, state ?? (await this.load(vmId)));
  }

  /**
   * Merges away every point retention does not keep, one step at a time (see retentionStep).
   * Used where nothing else waits on the VM; the site itself runs steps one by one.
   */
  async applyRetention(vmId: string): Promise<void> {
    while (await this.retentionStep(vmId));
  }

  /**
   * One merge: an unfinished one first (an image held by another process, a crash: otherwise its
   * point would stay listed, half merged, and retention would stop for good), else the oldest
   * point the plan drops that no running test failover reads through. Returns whether another
   * step may be due. A step rewrites one point's worth of changes, so a cycle waits for at most one.
   */
  async retentionStep(vmId: string): Promise<boolean> {
    // The next cycle's point is open: its commit runs the next step.
    if (this.storage.isWriting(vmId)) return false;
    const state = await this.load(vmId);
    if (!RETENTION_STATES.includes(state.state)) return false;
    if (state.points.some((p) => p.merging)) return this.finishMerge(state);
    const next = nextMerge(state, await this.retentionFor(vmId, state), this.options.now(), this.options.alsoHeld(vmId, state));
    if (next.waiting.length) this.logger.debug({ vm: vmId, waiting: next.waiting }, "retention merges wait for a running test failover");
    if (!next.pointId) return false;
    const pointId = next.pointId;
    const started = await this.exec(vmId, (s) => startMerge(s, { pointId, now: new Date(this.options.now()).toISOString() }));
    if (started.events.length === 0) return false;
    return this.finishMerge(started.newState);
  }

  /**
   * After a restart: finish interrupted merges, then remove images the ledger does not know.
   * `known` lists the VMs (from the read models); without it the whole ledger is read for them.
   */
  async recover(known?: readonly string[]): Promise<string[]> {
    const vmIds = new Set<string>(known);
    if (!known) {
      for (const e of await this.store.readAll({ streamPrefix: RELATIONSHIP_STREAM_PREFIX })) {
        const vmId = vmIdOfStream(e.stream);
        if (vmId) vmIds.add(vmId);
      }
    }
    for (const vmId of vmIds) {
      const state = await this.load(vmId);
      if (state.points.some((p) => p.merging)) await this.finishMerge(state);
      const after = await this.load(vmId);
      // A completed failover's VM runs on its point's chain: those files are not orphans.
      const known = new Set([...after.points.flatMap((p) => p.disks.map((d) => d.imagePath)), ...(after.failoverChainImages ?? [])]);
      this.storage.removeOrphans(vmId, known);
      this.storage.pruneChunkHashes(vmId, after.points.at(-1)?.cycleSeq);
    }
    return [...vmIds];
  }

  private finishMerge(state: RelationshipState): Promise<boolean> {
    return finishMerge(state, this.storage, async (input) => void (await this.exec(state.vmId, (s) => completeMerge(s, input))), this.logger);
  }

  private async exec(vmId: string, decide: Decide, opts: ExecuteCommandOptions = {}) {
    try {
      return await executeCommand(this.store, vmId, decide, opts);
    } catch (err) {
      if (err instanceof StaleGenerationError) throw new RelationshipRefusal(RejectReason.REJECT_REASON_STALE_GENERATION, err.message, err.currentGeneration, { cause: err });
      if (err instanceof OutOfOrderCycleError) throw new RelationshipRefusal(RejectReason.REJECT_REASON_OUT_OF_ORDER, err.message, undefined, { cause: err });
      if (err instanceof InvalidTransitionError) throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, err.message, undefined, { cause: err });
      throw err;
    }
  }
}
