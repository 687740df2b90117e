import { setTimeout as sleep } from "node:timers/promises";
import { errorMessage } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import { ChecksumAlgorithm, CompressionCodec, CycleKind } from "../../gen/qreplica/v1/common.js";
import { ChunkDigest, RejectReason, type CycleAck, type EffectivePolicy, type HelloAck, type PlannedFailoverRequested } from "../../gen/qreplica/v1/replication.js";
import type { RecordDownstreamFailoverInput, RecoveryPoint, RelationshipState } from "../../ledger/index.js";
import type { ReplicaStorage } from "../../storage/index.js";
import { ReplicationClient, currentCredentials, digestToWire, siteDial, type SiteCredentials } from "../../transport/index.js";
import type { ExtensionLedger, ExtensionState, ExtensionTarget } from "./extensionLedger.js";
import type { PrimaryStoppedInfo } from "../dataPlane/replicateSession.js";
import { notStopped, relayPlannedFailover, type RelayContext } from "./plannedFailoverRelay.js";
import { Responses, send, type ForwardStream } from "./replicateClient.js";
import { endCycle, noTotals, sendCycleBegin, sendDiskExtents, type ForwardCycle } from "./forwardCycle.js";
import { copyOwnIndexes, forwardingLost, forwardModeFrom, forwardNewestAsResync, type ForwardMode, type OwnIndex } from "./forwardResync.js";

const PROTOCOL_VERSION = 1;
const HELLO_TIMEOUT_MS = 30_000;
/** How often a forwarder looks for a newer committed point. */
const POLL_MS = 500;
/** Data extents go in pieces of at most this (the receiver may accept more; 1 MiB keeps memory flat). */
const PIECE_BYTES = 1024 * 1024;
const BACKOFF_MIN_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;

/** Where this site's points are valid to forward (as for retention): not once the VM failed over here. */
const FORWARD_STATES: readonly string[] = ["replicating", "paused", "resync-required", "resynchronising"];

export interface ForwarderDeps {
  siteId: string;
  ledger: ExtensionLedger;
  loadRelationship(vmId: string): Promise<RelationshipState>;
  storage: Pick<ReplicaStorage, "holdChains" | "pointExtents" | "seedChunkHashes" | "loadChunkHashes" | "indexDigest">;
  /** Runs `fn` as a step of the VM's serialized work (no merge runs meanwhile). */
  serialized<T>(vmId: string, fn: () => Promise<T>): Promise<T>;
  /** Chains released: retention may run the merges it held back. */
  afterRead(vmId: string): void;
  /** A planned failover at the third site: the primary's agent stops the VM and ships its final cycle here. */
  stopPrimary(vmId: string, powerdownTimeoutSeconds: number): Promise<PrimaryStoppedInfo>;
  /** That failover went through: recorded in the VM's relationship (the primary is fenced here). */
  recordDownstreamFailover(vmId: string, input: RecordDownstreamFailoverInput): Promise<unknown>;
  /** The target cancelled that failover and said so on the stream: the fence is lifted (downstreamCancel.ts). */
  downstreamFailoverCancelled(vmId: string, told: { targetSiteId: string; cancelledBy: string; targetGeneration: number }): Promise<unknown>;
  tls: SiteCredentials;
  logger: Logger;
}

class ForwardRefused extends Error {}

/** A policy's interval in seconds; continuous and absent policies add no bound of their own. */
function policyInterval(p: EffectivePolicy | undefined): number {
  return p?.frequency?.$case === "intervalSeconds" ? p.frequency.value : 0;
}

/**
 * Extended replication of one VM: this replica site sends its committed points, each as one cycle
 * whose cut-off is the point's, to a third site, over the same Replicate protocol an agent speaks
 * (this site's certificate is its identity there). The first point goes whole; each later one as
 * the clusters of the overlays above the last forwarded point (qemu:allocation-depth), which are
 * every cluster written since. Never more often than points commit here (and no more than once
 * per the configured interval: the newest point then carries the changes of the ones skipped).
 */
export class PointForwarder {
  lastError: string | undefined;
  private stopped = false;
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  /** The interval of the policy the third site binds the VM to (0: none): forwards are no more frequent. */
  private policyIntervalSeconds = 0;
  /** The zstd level of that policy (1 without one). */
  private compressionLevel = 1;
  /** The third site asked for a planned failover on the open stream (relayed once the forward under way ends). */
  private plannedFailover: PlannedFailoverRequested | undefined;
  /** The third site cancelled the planned failover this forwarder relayed (told on the stream kept open for it). */
  private failoverCancelled: { generation: bigint; cancelledBy: string } | undefined;
  /** The third site's operator asked for a resync (\`qreplica resync\`) on the open stream. */
  private resyncRequested = false;
  /** The open stream to the third site, cancelled by stop so that a forward under way ends now. */
  private stream: ForwardStream | undefined;

  constructor(
    private readonly deps: ForwarderDeps,
    public state: ExtensionState,
  ) {}

  get vmId(): string {
    return this.state.vmId;
  }

  start(): void {
    this.loop ??= this.run().catch((err: unknown) => this.deps.logger.error({ vm: this.vmId, err }, "extended replication ended with an error"));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    this.stream?.cancel();
    await this.loop;
  }

  private async run(): Promise<void> {
    let backoffMs = BACKOFF_MIN_MS;
    while (!this.stopped && this.state.target) {
      // The VM failed over at the target through this site: nothing is left to forward to it (see failedOver).
      const downstream = (await this.deps.loadRelationship(this.vmId).catch(() => undefined))?.downstreamFailover;
      if (downstream) {
        this.lastError = this.endedBy(downstream.reason);
        this.deps.logger.info({ vm: this.vmId, target: downstream.targetSiteId }, "the VM failed over at the site this one forwards to: forwarding ended");
        return;
      }
      try {
        await this.session(this.state.target, () => (backoffMs = BACKOFF_MIN_MS));
      } catch (err) {
        if (this.stopped) break;
        this.lastError = errorMessage(err);
        this.deps.logger.warn({ vm: this.vmId, target: this.state.target.targetSiteId, err: this.lastError, retryInMs: backoffMs }, "extended replication interrupted");
      }
      await sleep(backoffMs, undefined, { signal: this.abort.signal }).catch(() => undefined);
      backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
    }
  }

  private async session(target: ExtensionTarget, onHealthy: () => void): Promise<void> {
    const first = await this.until(async () => {
      const rel = await this.deps.loadRelationship(this.vmId);
      return FORWARD_STATES.includes(rel.state) && rel.points.length > 0 ? rel : undefined;
    });
    if (!first) return;
    // A request belongs to its stream: one left from a broken stream is not repeated.
    this.plannedFailover = undefined;
    this.resyncRequested = false;
    this.failoverCancelled = undefined;
    const dial = siteDial(target.targetAddress, currentCredentials(this.deps.tls, this.deps.logger), { expectedServerIdentity: target.targetSiteId });
    const client = new ReplicationClient(target.targetAddress, dial.credentials, dial.options);
    const stream: ForwardStream = client.replicate();
    this.stream = stream;
    try {
      if (this.stopped) return;
      // C's planned failover goes through this site: the loop below has the primary's agent stop the VM.
      const responses = new Responses(stream, {
        onPlannedFailover: (req) => (this.plannedFailover ??= req),
        onPolicy: (p) => this.usePolicy(p),
        onResyncRequested: () => (this.resyncRequested = true),
        onFailoverCancelled: (notice) => (this.failoverCancelled ??= notice),
      });
      const ack = await this.hello(stream, responses, first);
      this.usePolicy(ack.policy);
      // Counted since this target was configured: points forwarded to another site before are no base here.
      let mode: ForwardMode = forwardModeFrom(ack, { targetSiteId: target.targetSiteId, vmId: this.vmId, forwardedCount: this.state.targetForwards });
      onHealthy();
      this.lastError =
        mode === "wait" ? `site ${target.targetSiteId} needs a resync (${ack.resyncReason}) and waits for its operator: 'qreplica resync ${this.vmId}' there` : undefined;
      if (mode !== "incremental" && mode !== "full")
        this.deps.logger.warn({ vm: this.vmId, target: target.targetSiteId, mode, reason: ack.resyncReason }, "the third site asks for a resync by comparison");
      let seq = Number(ack.lastCommittedCycleSequence) + 1;
      const generation = Number(ack.generation);
      const maxChunk = Math.min(ack.maxChunkBytes || PIECE_BYTES, PIECE_BYTES);
      const checksum = ack.acceptedChecksumAlgorithms.includes(ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256)
        ? ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256
        : (ack.acceptedChecksumAlgorithms[0] ?? ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256);
      while (!this.stopped) {
        const due = await this.until(async () => {
          if (this.plannedFailover) return this.plannedFailover;
          if (this.resyncRequested) [this.resyncRequested, mode] = [false, "resync"];
          // A resync goes at once, whatever the interval: the third site takes no incremental until it has one.
          return mode === "wait" ? undefined : mode === "resync" ? true : await this.dueForForwarding(target);
        }, responses.failed);
        if (!due) return;
        if (due !== true) {
          const cycle = { seq, generation, maxChunk, checksum };
          await relayPlannedFailover(this.relayContext(stream, responses, target), due.powerdownTimeoutSeconds, cycle);
          return await this.awaitDownstreamCancel(target, responses);
        }
        const c = { full: mode === "full", seq, generation, maxChunk, checksum };
        await (mode === "resync" ? this.forwardResync(stream, responses, c) : this.forward(stream, responses, c));
        this.lastError = undefined;
        seq++;
        mode = "incremental";
      }
    } finally {
      this.stream = undefined;
      stream.cancel();
      client.close();
    }
  }

  private async hello(stream: ForwardStream, responses: Responses, rel: RelationshipState): Promise<HelloAck> {
    const newest = rel.points.at(-1)!;
    await send(stream, responses, {
      body: {
        $case: "hello",
        value: {
          protocolVersion: PROTOCOL_VERSION,
          sourceSiteId: this.deps.siteId,
          agentId: `${this.deps.siteId}-forwarder`,
          vmId: this.vmId,
          // The third site's generation as last acknowledged; 0 for a relationship it does not have yet.
          generation: BigInt(this.state.targetGeneration),
          disks: newest.disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeBytes) })),
          supportedCodecs: [CompressionCodec.COMPRESSION_CODEC_ZSTD, CompressionCodec.COMPRESSION_CODEC_NONE],
          supportedChecksumAlgorithms: [ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256],
          vmSpecJson: Object.keys(rel.vmSpec).length ? JSON.stringify(rel.vmSpec) : "",
          trackingLost: forwardingLost(rel, this.state.forwarded.at(-1), this.deps.siteId),
          resyncMode: 0,
          // The digest of this site's chunk hash indexes first: a third site with the same one
          // compares with its index, and this site with its own (see forwardResync.ts).
          resyncDigests: [...new Set([digestToWire(this.deps.storage.indexDigest), ChunkDigest.CHUNK_DIGEST_SHA256])],
          policyName: "",
          configuredIntervalSeconds: this.state.target?.intervalSeconds ?? 0,
          configuredCompressionLevel: 1,
          // The first forward is the initial copy, sent at once.
          initialReplication: "now",
          upstreamFailover: "",
          forwardingSite: true,
          // The third site compares it with its newest point: another one there asks for a resync.
          // None when nothing went to this target since it was configured: another site's point id says nothing here.
          forwardedPointId: this.state.targetForwards > 0 ? (this.state.forwarded.at(-1)?.targetPointId ?? "") : "",
        },
      },
    });
    for (;;) {
      const r = await responses.next(HELLO_TIMEOUT_MS);
      if (r.body?.$case === "helloAck") return r.body.value;
      if (r.body?.$case === "helloRejected") {
        const v = r.body.value;
        throw new ForwardRefused(`site ${this.state.target?.targetSiteId} refused this site's Hello (${RejectReason[v.reason]}): ${v.message}`);
      }
    }
  }

  private relayContext(stream: ForwardStream, responses: Responses, target: ExtensionTarget): RelayContext {
    return {
      vmId: this.vmId,
      targetSiteId: target.targetSiteId,
      stopPrimary: (seconds) => this.deps.stopPrimary(this.vmId, seconds),
      hasUnforwarded: async () => (await this.dueForForwarding({ ...target, intervalSeconds: 0 }, true)) === true,
      // Whole only if nothing was forwarded yet (C then holds no point to fail over to anyway).
      forward: (c) => this.forward(stream, responses, { ...c, full: this.state.targetForwards === 0 }),
      lastForwardedCutoff: () => this.state.forwarded.at(-1)?.cutoffAt,
      send: (message) => send(stream, responses, message),
      failedOver: (stopped) => this.failedOver(target, stopped),
      fail: async (message) => {
        this.lastError = message;
        this.deps.logger.warn({ vm: this.vmId, target: target.targetSiteId }, message);
        await send(stream, responses, notStopped(message)).catch(() => undefined);
      },
      logger: this.deps.logger,
    };
  }

  /**
   * Records the planned failover at the target that went through this site: A's agent is fenced
   * here from now on and this forwarder ends (run's loop sees it). A failure is logged and shown,
   * since then a restarted primary would be accepted here again.
   */
  private async failedOver(target: ExtensionTarget, stopped: PrimaryStoppedInfo): Promise<void> {
    const last = this.state.forwarded.at(-1);
    try {
      if (!last) throw new Error("no point was forwarded");
      await this.deps.recordDownstreamFailover(this.vmId, {
        targetSiteId: target.targetSiteId,
        pointId: last.pointId,
        targetPointId: last.targetPointId,
        primaryStoppedAt: stopped.stoppedAt.toISOString(),
        stopMethod: stopped.method,
        requestedBy: this.plannedFailover?.requestedBy ?? "",
        requestedByRole: this.plannedFailover?.requestedByRole ?? "",
        recordedAt: new Date().toISOString(),
      });
    } catch (err) {
      this.lastError =
        `VM ${this.vmId} failed over at ${target.targetSiteId}, but this site could not record it (${errorMessage(err)}): ` +
        `its primary is not fenced here, do not start its VM again; 'qreplica pause ${this.vmId}' here keeps it from replicating`;
      this.deps.logger.error({ vm: this.vmId, target: target.targetSiteId, err: errorMessage(err) }, this.lastError);
    }
  }

  /**
   * After a planned failover at the target went through this site (FailedOverDownstream), the
   * stream stays open: should the target cancel that failover, it says so on it, and the fence on
   * the primary is lifted here (the loop then forwards again: the target's cancel hands its new
   * generation over to this site's next Hello). The stream ending first (the target completed and
   * restarted, a link or site went down) leaves the fence, whose message names the operator's
   * command for a cancel this site could not be told of.
   */
  private async awaitDownstreamCancel(target: ExtensionTarget, responses: Responses): Promise<void> {
    const downstream = (await this.deps.loadRelationship(this.vmId)).downstreamFailover;
    if (!downstream) return;
    this.lastError = this.endedBy(downstream.reason);
    const notice = await this.until(async () => this.failoverCancelled, responses.failed);
    if (!notice) return;
    await this.deps.downstreamFailoverCancelled(this.vmId, {
      targetSiteId: target.targetSiteId,
      cancelledBy: notice.cancelledBy,
      targetGeneration: Number(notice.generation),
    });
  }

  private endedBy(reason: string): string {
    return `forwarding ended: ${reason}; 'qreplica extend ${this.vmId} --stop' here removes this configuration`;
  }

  /** The newest point, once it is newer than the last forwarded one and the interval has passed. */
  private async dueForForwarding(target: ExtensionTarget, now = false): Promise<true | undefined> {
    const last = this.state.forwarded.at(-1);
    const intervalSeconds = now ? 0 : Math.max(target.intervalSeconds, this.policyIntervalSeconds);
    if (last && intervalSeconds > 0 && Date.now() - Date.parse(last.forwardedAt) < intervalSeconds * 1000) return undefined;
    const rel = await this.deps.loadRelationship(this.vmId);
    if (!FORWARD_STATES.includes(rel.state)) {
      throw new Error(
        rel.state === "failed-over-waiting-completion"
          ? `VM ${this.vmId} failed over at this site: once the failover is completed ('qreplica complete'), the failover VM replicates on to site ${target.targetSiteId}`
          : `VM ${this.vmId} is ${rel.state} on this site: its points are not forwarded in that state`,
      );
    }
    const newest = rel.points.at(-1);
    if (!newest || (last && Date.parse(newest.cutoffAt) <= Date.parse(last.cutoffAt))) return undefined;
    return true;
  }

  /** Polls `probe` until it gives a value; undefined when stopped. Rejects when `failed` does. */
  private async until<T>(probe: () => Promise<T | undefined>, failed?: Promise<never>): Promise<T | undefined> {
    while (!this.stopped) {
      const v = await probe();
      if (v !== undefined) return v;
      await Promise.race([sleep(POLL_MS, undefined, { signal: this.abort.signal }).catch(() => undefined), ...(failed ? [failed] : [])]);
    }
    return undefined;
  }

  /**
   * Picks the newest point and holds the VM's chains (no merge) while its extents are read, in one
   * serialized step, so no merge is half done under the read. Points from the last forwarded one on
   * are kept by retention (heldPoints), so the overlays above it are exactly the newer points.
   */
  private async pick(full: boolean, resync = false): Promise<{ point: RecoveryPoint; depth: number | undefined; indexes: Map<string, OwnIndex>; release: () => void }> {
    return this.deps.serialized(this.vmId, async () => {
      const rel = await this.deps.loadRelationship(this.vmId);
      const point = rel.points.at(-1);
      if (!point) throw new Error(`VM ${this.vmId} has no point on this site`);
      if (!FORWARD_STATES.includes(rel.state)) throw new Error(`VM ${this.vmId} is ${rel.state} on this site: its points are not forwarded in that state`);
      // Copied here: a point begun after this step takes the newest point's index over.
      const indexes = resync ? copyOwnIndexes(this.deps.storage, this.vmId, point) : new Map<string, OwnIndex>();
      let depth: number | undefined;
      if (!full && !resync) {
        const last = this.state.forwarded.at(-1)!;
        const i = rel.points.findIndex((p) => p.pointId === last.pointId);
        if (i < 0) throw new Error(`the last forwarded point ${last.pointId} is no longer on this site: the changes since it cannot be told apart`);
        depth = rel.points.length - 1 - i;
      }
      return { point, depth, indexes, release: this.deps.storage.holdChains(this.vmId) };
    });
  }

  private async forward(
    stream: ForwardStream,
    responses: Responses,
    c: { full: boolean; seq: number; generation: number; maxChunk: number; checksum: ChecksumAlgorithm },
  ): Promise<void> {
    const started = Date.now();
    const { point, depth, release } = await this.pick(c.full);
    const cycle: ForwardCycle = { vmId: this.vmId, generation: c.generation, seq: c.seq, checksum: c.checksum, compressionLevel: this.compressionLevel, what: "forwarded" };
    const totals = noTotals();
    let ack: CycleAck;
    try {
      await sendCycleBegin(stream, responses, cycle, point, c.full ? CycleKind.CYCLE_KIND_INITIAL : CycleKind.CYCLE_KIND_INCREMENTAL);
      for (const disk of point.disks) {
        await sendDiskExtents(stream, responses, cycle, disk.diskId, this.deps.storage.pointExtents(disk.imagePath, { depth, pieceBytes: c.maxChunk }), totals, this.deps.logger);
      }
      ack = await endCycle(stream, responses, cycle, totals, this.deps.logger);
    } finally {
      release();
      this.deps.afterRead(this.vmId);
    }
    this.state = await this.deps.ledger.recordForwarded(this.vmId, {
      pointId: point.pointId,
      cutoffAt: point.cutoffAt,
      targetPointId: ack.recoveryPointId,
      targetSeq: c.seq,
      targetGeneration: c.generation,
      kind: c.full ? "full" : "incremental",
      dataBytes: totals.data,
      wireBytes: totals.wire,
    });
    this.deps.logger.info(
      { vm: this.vmId, point: point.pointId, targetPoint: ack.recoveryPointId, target: this.state.target?.targetSiteId, seq: c.seq, depth, ...totals, ms: Date.now() - started },
      "point forwarded to the third site",
    );
  }

  /** A resync by comparison of this site's newest point against the third site's (see forwardResync.ts). */
  private async forwardResync(stream: ForwardStream, responses: Responses, c: { seq: number; generation: number; maxChunk: number; checksum: ChecksumAlgorithm }): Promise<void> {
    this.state = await forwardNewestAsResync({
      stream,
      responses,
      pick: () => this.pick(true, true),
      afterRead: () => this.deps.afterRead(this.vmId),
      storage: this.deps.storage,
      ledger: this.deps.ledger,
      logger: this.deps.logger,
      cycle: { ...c, vmId: this.vmId, compressionLevel: this.compressionLevel },
    });
  }

  private usePolicy(p: EffectivePolicy | undefined): void {
    this.policyIntervalSeconds = policyInterval(p);
    this.compressionLevel = p?.compressionLevel || 1;
  }
}
