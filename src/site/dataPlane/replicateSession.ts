import * as grpc from "@grpc/grpc-js";
import { faultPoint } from "../../common/faultPoints.js";
import type { Logger } from "../../common/logger.js";
import { errorMessage } from "../../common/errors.js";
import { CycleKind, Consistency, CompressionCodec, ChecksumAlgorithm } from "../../gen/qreplica/v1/common.js";
import {
  RejectReason,
  ResumeHint,
  ResyncMode,
  type CycleBegin,
  type CycleEnd,
  type CycleSkipped,
  type EffectivePolicy,
  type ExtentChunk,
  type Hello,
  type ReplicateRequest,
  type ReplicateResponse,
} from "../../gen/qreplica/v1/replication.js";
import {
  KNOWN_CHECKSUMS,
  limitReadAhead,
  peerIdentity,
  pickResyncDigest,
  REPLICATE_READ_AHEAD_MESSAGES,
  untilWritten,
  writeWithBackpressure,
  type CertificateIdentity,
  type Role,
} from "../../transport/index.js";
import type { ChunkDigestName } from "../../common/chunkDigest.js";
import { peerHost } from "../controlPlane/refusalAudit.js";
import { resyncModeAt } from "../resyncWindows.js";
import { MAX_CHUNK_BYTES, OpenCycle } from "./openCycle.js";
import { helloRefusal, PROTOCOL_VERSION } from "./helloAdmission.js";
import { UNDECODABLE } from "../tolerantDecoding.js";
import { parseVmSpec, sendSeedHashes } from "./resync.js";
import type { SiteContext } from "../siteContext.js";
import { RelationshipRefusal, type ResumeKind } from "../relationships.js";
import type { PointGroup } from "../../ledger/index.js";

/** A freeze failure is the agent's text; the ledger keeps no more of it than this. */
const MAX_QUIESCE_FAILURE_CHARS = 1000;
/** A group has at most this many members as the site records them (an agent's config is far smaller). */
const MAX_GROUP_MEMBERS = 256;

/** The consistency group cut-off a CycleBegin names, if any (agents before groups send none). */
function groupOf(begin: CycleBegin): PointGroup | undefined {
  if (!begin.groupId || !begin.groupCutoffId) return undefined;
  const pauseMs = Number.isFinite(begin.groupPauseMs) && begin.groupPauseMs > 0 ? Math.round(begin.groupPauseMs * 1000) / 1000 : undefined;
  return {
    groupId: begin.groupId.slice(0, 200),
    cutoffId: begin.groupCutoffId.slice(0, 200),
    members: begin.groupMembers.slice(0, MAX_GROUP_MEMBERS).map((m) => m.slice(0, 200)),
    ...(pauseMs !== undefined ? { pauseMs } : {}),
  };
}

const RESUME_HINT: Record<ResumeKind, ResumeHint> = {
  initial: ResumeHint.RESUME_HINT_INITIAL_REPLICATION,
  incremental: ResumeHint.RESUME_HINT_INCREMENTAL,
  resync: ResumeHint.RESUME_HINT_RESYNC,
  wait: ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR,
};

export { PROTOCOL_VERSION };

export interface PrimaryStoppedInfo {
  stoppedAt: Date;
  finalCycleSeq: number;
  method: string;
  disks: Array<{ diskId: string; imagePath: string }>;
}

export { MAX_CHUNK_BYTES };

type Call = grpc.ServerDuplexStream<ReplicateRequest, ReplicateResponse>;

/**
 * One agent's Replicate stream for one VM: Hello, then cycles of CycleBegin / ExtentChunk* /
 * CycleEnd, each acked only after its recovery point is durable and in the ledger.
 */
export class ReplicateSession {
  private vmId: string | undefined;
  private generation = 0;
  private cycle: OpenCycle | undefined;
  private acceptedChecksums: ChecksumAlgorithm[] = [];
  /** What this agent's resyncs compare chunks with (picked at Hello). */
  private resyncDigest: ChunkDigestName = "sha256";
  /** A cycle refused mid-way: its remaining chunks are dropped until its end or abort. */
  private refusedSeq: number | undefined;
  private superseded = false;
  /** endWithStatus was called: later messages are ignored, and the stream ends with that status. */
  private ending = false;
  /** The role bound into the peer's certificate, for the audit of a refused Hello. */
  private peerRole: Role | "none" = "none";
  /** The peer's certificate as verified at the stream's start (CERT_EXPIRING, revocation). */
  private peerCertificate: CertificateIdentity | undefined;
  private primaryStopped: { resolve(info: PrimaryStoppedInfo): void; reject(err: Error): void } | undefined;
  private readonly logger: Logger;

  constructor(
    private readonly ctx: SiteContext,
    private readonly call: Call,
  ) {
    this.logger = ctx.logger.child({ peer: call.getPeer() });
  }

  /**
   * Planned failover: asks the primary's agent to stop its VM and ship a final cycle; resolves
   * once the agent reports the VM stopped and that cycle acknowledged.
   */
  requestPlannedFailover(powerdownTimeoutSeconds: number, timeoutMs: number, requestedBy?: { identity: string; role: string }): Promise<PrimaryStoppedInfo> {
    return new Promise<PrimaryStoppedInfo>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.primaryStopped = undefined;
        reject(new Error(`the primary did not report its VM stopped within ${timeoutMs} ms`));
      }, timeoutMs);
      this.primaryStopped = {
        resolve: (info) => {
          clearTimeout(timer);
          resolve(info);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      writeWithBackpressure(this.call, {
        body: {
          $case: "plannedFailoverRequested",
          value: { generation: BigInt(this.generation), powerdownTimeoutSeconds, ...(requestedBy ? { requestedBy: requestedBy.identity, requestedByRole: requestedBy.role } : {}) },
        },
      }).catch((err: unknown) => this.primaryStopped?.reject(err as Error));
    });
  }

  /** The cycle being received now, for GetStatus's progress; undefined between cycles. */
  /** The peer is a site forwarding its points (extended replication), not an agent: it has no VM to stop. */
  forwardingSite = false;

  /** The agent config's initial replication choice, as its Hello said (for status before the first point). */
  initialChoice: { kind: string; at?: Date } | undefined;

  cycleInProgress(): { seq: number; kind: "full" | "incremental" | "resync"; startedAt: Date; bytesDone: number; bytesTotal: number; wireBytes: number } | undefined {
    const c = this.cycle;
    return c ? { seq: c.seq, kind: c.kind, startedAt: new Date(c.startedAt), ...c.progress() } : undefined;
  }

  /**
   * Operator commands reach the connected agent over its open stream: a resync to run now, a
   * pause (no cycle until resumed; the agent keeps its changes), a resume.
   */
  async notify(
    notice: { $case: "resyncRequested"; requestedBy: string } | { $case: "replicationPaused"; reason: string } | { $case: "replicationResumed"; resume: ResumeKind },
  ): Promise<void> {
    const generation = BigInt(this.generation);
    const body =
      notice.$case === "resyncRequested"
        ? { $case: "resyncRequested" as const, value: { generation, requestedBy: notice.requestedBy } }
        : notice.$case === "replicationPaused"
          ? { $case: "replicationPaused" as const, value: { generation, reason: notice.reason } }
          : { $case: "replicationResumed" as const, value: { generation, resumeHint: RESUME_HINT[notice.resume] } };
    await writeWithBackpressure(this.call, { body });
  }

  /** The VM's effective policy changed: the agent runs its next cycle with it (absent: its own config's values). */
  async sendPolicy(policy: EffectivePolicy | undefined): Promise<void> {
    await writeWithBackpressure(this.call, { body: { $case: "policyChanged", value: { generation: BigInt(this.generation), policy } } });
  }

  /** Another stream for the same VM took over (the agent reconnected): stop this one. */
  supersede(): void {
    this.superseded = true;
    this.endWithStatus(grpc.status.ABORTED, "a newer Replicate stream for this VM took over");
  }

  /**
   * A revocation list that arrives while the stream is open cuts it: a stolen key must not keep
   * replicating until it reconnects. An open cycle is discarded (no point from a revoked peer).
   */
  cutIfRevoked(): boolean {
    const revoked = this.peerCertificate && this.ctx.revocations?.refusal(this.peerCertificate);
    if (!revoked || this.ending) return false;
    this.logger.warn({ vm: this.vmId, identity: this.peerCertificate?.commonName }, "the primary's certificate was revoked: its open stream is cut");
    const refusal = {
      identity: this.peerCertificate!.commonName,
      role: this.peerRole,
      rpc: "Replicate",
      needed: "authorization",
      reason: "CERTIFICATE_REVOKED",
      message: `${revoked}; its open stream is cut`,
    } as const;
    this.ctx.refusals
      .record({ ...refusal, vmId: this.vmId ?? "", vmIdMalformed: false, peer: peerHost(this.call.getPeer()) })
      .catch((err: unknown) => this.logger.error({ err }, "could not record the cut stream in the audit stream"));
    this.endWithStatus(grpc.status.UNAUTHENTICATED, revoked);
    return true;
  }

  async run(): Promise<void> {
    let identity: string;
    try {
      const peer = peerIdentity(this.call);
      identity = peer.commonName;
      this.peerRole = peer.role ?? "none";
      this.peerCertificate = peer;
    } catch (err) {
      this.endWithStatus(grpc.status.UNAUTHENTICATED, errorMessage(err));
      return;
    }
    try {
      limitReadAhead(this.call, REPLICATE_READ_AHEAD_MESSAGES);
      // destroyOnReturn: false, so that the call is still there to finish with a status once the
      // sender half-closes (a destroyed grpc-js call never sends one).
      for await (const req of this.call.iterator({ destroyOnReturn: false }) as AsyncIterable<ReplicateRequest>) {
        if (this.superseded) break;
        await this.onMessage(req, identity);
      }
    } catch (err) {
      if (!this.superseded) this.logger.warn({ err, vm: this.vmId }, "Replicate stream ended with an error");
    } finally {
      if (this.vmId) this.ctx.activity.touch(this.vmId);
      this.primaryStopped?.reject(new Error("the primary's stream ended before it reported its VM stopped"));
      await this.discardOpenCycle("the stream ended before the cycle was complete");
      if (this.vmId) this.ctx.releaseSession(this.vmId, this);
      // The sender half-closed: finish the call (status OK) rather than leave it open to its deadline.
      if (!this.ending && !this.call.destroyed && !this.call.writableEnded) this.call.end();
    }
  }

  private async onMessage(req: ReplicateRequest, identity: string): Promise<void> {
    if (this.ending) return;
    const undecodable = (req as { [UNDECODABLE]?: string })[UNDECODABLE];
    if (undecodable !== undefined) return this.endWithStatus(grpc.status.INVALID_ARGUMENT, `a ReplicateRequest that is not valid protobuf (${undecodable})`);
    const body = req.body;
    if (!body) return this.endWithStatus(grpc.status.INVALID_ARGUMENT, "empty ReplicateRequest");
    if (body.$case !== "hello" && this.vmId === undefined) {
      return this.endWithStatus(grpc.status.FAILED_PRECONDITION, `'${body.$case}' before Hello: a stream must start with Hello`);
    }
    // Health calls an agent silent after a while without any message (see site/health).
    if (this.vmId !== undefined) this.ctx.activity.touch(this.vmId);
    switch (body.$case) {
      case "hello":
        await this.onHello(body.value, identity);
        if (this.vmId !== undefined) this.ctx.activity.touch(this.vmId);
        return;
      case "cycleBegin":
        return this.onCycleBegin(body.value);
      case "extentChunk":
        return this.onChunk(body.value);
      case "cycleEnd":
        return this.onCycleEnd(body.value);
      case "primaryStopped": {
        const v = body.value;
        if (v.notStoppedReason) {
          this.primaryStopped?.reject(new Error(v.notStoppedReason));
          this.primaryStopped = undefined;
          return;
        }
        this.primaryStopped?.resolve({
          stoppedAt: v.stoppedAt ?? new Date(),
          finalCycleSeq: Number(v.finalCycleSequence),
          method: v.method,
          disks: v.disks.map((d) => ({ diskId: d.diskId, imagePath: d.imagePath })),
        });
        this.primaryStopped = undefined;
        return;
      }
      case "cycleSkipped":
        return this.onCycleSkipped(body.value);
      case "cycleAbort":
        if (this.cycle && BigInt(this.cycle.seq) === body.value.cycleSequence) {
          await this.failCycle(this.cycle.seq, "ABORTED_BY_SENDER", body.value.message || "the sender aborted the cycle");
        }
        this.refusedSeq = undefined;
        return;
    }
  }

  private async onHello(hello: Hello, identity: string): Promise<void> {
    if (this.vmId !== undefined) return this.endWithStatus(grpc.status.FAILED_PRECONDITION, "a second Hello on the same stream");
    const refuse = async (reason: RejectReason, message: string, status: grpc.status, currentGeneration = 0) => {
      this.logger.warn({ vm: hello.vmId, identity, reason: RejectReason[reason] }, message);
      // Wait until grpc-js has sent the message, not merely queued it: endWithStatus's 'error' ends
      // the for-await loop in run(), which destroys the call, and a call destroyed with a write
      // still in progress never sends its status (the refused client would hang to its deadline).
      await new Promise<void>((resolve) => {
        if (this.call.destroyed || this.call.writableEnded) return resolve();
        this.call.write({ body: { $case: "helloRejected", value: { generation: hello.generation, reason, message, currentGeneration: BigInt(currentGeneration) } } }, () =>
          resolve(),
        );
      });
      this.endWithStatus(status, message);
    };
    const refused = await helloRefusal(this.ctx, hello, { identity, role: this.peerRole, certificate: this.peerCertificate, host: peerHost(this.call.getPeer()) });
    if (refused) return refuse(refused.reason, refused.message, refused.status);
    try {
      const accepted = await this.ctx.relationships.acceptHello({
        vmId: hello.vmId,
        primarySiteId: hello.sourceSiteId,
        primaryIdentity: identity,
        presentedGeneration: Number(hello.generation),
        vmSpec: parseVmSpec(hello.vmSpecJson),
        disks: hello.disks.map((d) => ({ diskId: d.diskId, sizeBytes: Number(d.virtualSizeBytes) })),
        trackingLost: hello.trackingLost.map((t) => ({ diskId: t.diskId, code: t.code || "TRACKING_LOST", reason: t.reason })),
        resyncMode: await this.resyncModeOf(hello),
        ...(hello.upstreamFailover ? { upstreamFailover: hello.upstreamFailover.slice(0, 500) } : {}),
        ...(hello.forwardingSite && hello.forwardedPointId !== undefined ? { forwardedPointId: hello.forwardedPointId } : {}),
      });
      this.vmId = hello.vmId;
      this.generation = accepted.generation;
      this.forwardingSite = hello.forwardingSite === true;
      this.initialChoice = { kind: hello.initialReplication || "now", ...(hello.initialReplicationAt ? { at: hello.initialReplicationAt } : {}) };
      // What both sides know; a sender that offers nothing is assumed to send SHA-256.
      const offered = hello.supportedChecksumAlgorithms.length ? hello.supportedChecksumAlgorithms : [ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256];
      this.acceptedChecksums = KNOWN_CHECKSUMS.filter((a) => offered.includes(a));
      this.resyncDigest = pickResyncDigest(hello.resyncDigests, this.ctx.storage.indexDigest);
      await this.ctx.policies.atHello(hello.vmId, {
        policyName: hello.policyName,
        intervalSeconds: hello.configuredIntervalSeconds,
        compressionLevel: hello.configuredCompressionLevel,
        resync: hello.resyncMode === ResyncMode.RESYNC_MODE_MANUAL ? "manual" : "automatic",
        identity,
      });
      this.ctx.claimSession(hello.vmId, this);
      if (this.peerCertificate) this.ctx.health?.noteAgentCertificate(hello.vmId, this.peerCertificate);
      await writeWithBackpressure(this.call, {
        body: {
          $case: "helloAck",
          value: {
            generation: BigInt(accepted.generation),
            protocolVersion: PROTOCOL_VERSION,
            replicaSiteId: this.ctx.siteId,
            lastCommittedCycleSequence: BigInt(accepted.lastCycleSeq),
            resumeHint: RESUME_HINT[accepted.resume],
            maxChunkBytes: MAX_CHUNK_BYTES,
            acceptedCodecs: [CompressionCodec.COMPRESSION_CODEC_ZSTD, CompressionCodec.COMPRESSION_CODEC_NONE],
            acceptedChecksumAlgorithms: this.acceptedChecksums,
            resyncReason: accepted.resyncReason ?? "",
            policy: this.ctx.policies.wireFor(hello.vmId),
          },
        },
      });
      this.logger.info(
        {
          vm: hello.vmId,
          identity,
          generation: accepted.generation,
          resume: accepted.resume,
          resyncReason: accepted.resyncReason,
          policy: this.ctx.policies.effectivePolicyVersion(hello.vmId),
        },
        "Hello accepted",
      );
    } catch (err) {
      if (err instanceof RelationshipRefusal) {
        const status = err.reason === RejectReason.REJECT_REASON_UNAUTHORIZED ? grpc.status.PERMISSION_DENIED : grpc.status.FAILED_PRECONDITION;
        return refuse(err.reason, err.message, status, err.currentGeneration);
      }
      throw err;
    }
  }

  /**
   * A VM bound to a policy resyncs as its policy says (outside its resync window it waits, and
   * ResyncWindows starts it when the window opens; a resync already under way goes on);
   * otherwise as its agent config says (Hello).
   */
  private async resyncModeOf(hello: Hello): Promise<"automatic" | "manual"> {
    if (this.ctx.policies.effectivePolicyVersion(hello.vmId).version === 0) return hello.resyncMode === ResyncMode.RESYNC_MODE_MANUAL ? "manual" : "automatic";
    const policy = this.ctx.policies.effectivePolicy(hello.vmId);
    if (policy.resync.mode === "automatic" && (await this.ctx.relationships.load(hello.vmId)).state === "resynchronising") return "automatic";
    return resyncModeAt(policy, new Date());
  }

  private async onCycleBegin(begin: CycleBegin): Promise<void> {
    const vmId = this.vmId!;
    const seq = Number(begin.cycleSequence);
    // Refused without a CycleFailed: a message of another generation must not touch this one's
    // relationship (it would consume the sequence number and count as this primary's failure).
    if (Number(begin.generation) !== this.generation)
      return this.refuseCycle(seq, RejectReason.REJECT_REASON_STALE_GENERATION, `generation ${begin.generation} is not the current ${this.generation}`, { record: false });
    if (this.cycle) return this.refuseCycle(seq, RejectReason.REJECT_REASON_OUT_OF_ORDER, `cycle ${this.cycle.seq} is still open`);
    const kind =
      begin.kind === CycleKind.CYCLE_KIND_INITIAL
        ? "full"
        : begin.kind === CycleKind.CYCLE_KIND_INCREMENTAL
          ? "incremental"
          : begin.kind === CycleKind.CYCLE_KIND_RESYNC
            ? "resync"
            : undefined;
    if (!kind) return this.refuseCycle(seq, RejectReason.REJECT_REASON_INVALID_STATE, `unknown cycle kind ${begin.kind}`);
    const cutoffAt = begin.cutoffTime ?? new Date();
    try {
      const point = await this.ctx.serializer.run(vmId, () =>
        this.ctx.relationships.beginCycle({
          vmId,
          seq,
          kind,
          generation: this.generation,
          cutoffAt,
          disks: begin.disks.map((d) => ({ diskId: d.diskId, sizeBytes: Number(d.virtualSizeBytes) })),
        }),
      );
      const consistency = begin.consistency === Consistency.CONSISTENCY_APPLICATION ? "application" : "crash";
      // Only the agent's words: kept short, and meaningless on an application-consistent point.
      const quiesceFailure = consistency === "crash" && begin.quiesceFailure ? begin.quiesceFailure.slice(0, MAX_QUIESCE_FAILURE_CHARS) : undefined;
      this.cycle = new OpenCycle(seq, kind, cutoffAt, consistency, point, quiesceFailure, groupOf(begin));
      this.cycle.plan(
        begin.disks.map((d) => ({ diskId: d.diskId, sizeBytes: Number(d.virtualSizeBytes) })),
        Number(begin.plannedBytes),
      );
      this.refusedSeq = undefined;
      if (kind === "resync") {
        const disks = begin.disks.map((d) => ({ diskId: d.diskId, sizeBytes: Number(d.virtualSizeBytes) }));
        await sendSeedHashes(this.ctx, this.call, { vmId, generation: this.generation, seq, disks, point }, this.resyncDigest);
      }
    } catch (err) {
      if (err instanceof RelationshipRefusal) return this.refuseCycle(seq, err.reason, err.message);
      return this.refuseCycle(seq, RejectReason.REJECT_REASON_STORAGE_FAILURE, errorMessage(err));
    }
  }

  private async onChunk(chunk: ExtentChunk): Promise<void> {
    const seq = Number(chunk.cycleSequence);
    if (this.refusedSeq === seq) return;
    const cycle = this.cycle;
    if (!cycle || cycle.seq !== seq) return this.refuseCycle(seq, RejectReason.REJECT_REASON_OUT_OF_ORDER, `chunk for cycle ${seq}, which is not open`);
    if (Number(chunk.generation) !== this.generation)
      return this.rejectChunk(chunk, RejectReason.REJECT_REASON_STALE_GENERATION, `generation ${chunk.generation} is not the current ${this.generation}`);
    const refused = await cycle.apply(chunk, this.acceptedChecksums);
    if (refused) return this.rejectChunk(chunk, refused.reason, refused.message);
  }

  private async onCycleEnd(end: CycleEnd): Promise<void> {
    const seq = Number(end.cycleSequence);
    if (this.refusedSeq === seq) {
      this.refusedSeq = undefined;
      return;
    }
    const cycle = this.cycle;
    if (!cycle || cycle.seq !== seq) return this.refuseCycle(seq, RejectReason.REJECT_REASON_OUT_OF_ORDER, `CycleEnd for cycle ${seq}, which is not open`);
    if (Number(end.extentCount) !== cycle.extents || Number(end.dataBytes) !== cycle.dataBytes || Number(end.zeroBytes) !== cycle.zeroBytes) {
      return this.refuseCycle(
        seq,
        RejectReason.REJECT_REASON_TOTALS_MISMATCH,
        `the sender counted ${end.extentCount} extents / ${end.dataBytes} data / ${end.zeroBytes} zero bytes, the site received ${cycle.extents} / ${cycle.dataBytes} / ${cycle.zeroBytes}`,
      );
    }
    this.cycle = undefined;
    const vmId = this.vmId!;
    const endAt = Date.now();
    try {
      const committed = await this.ctx.serializer.run(vmId, () =>
        this.ctx.relationships.commitCycle({
          vmId,
          seq,
          kind: cycle.kind,
          generation: this.generation,
          cutoffAt: cycle.cutoffAt,
          consistency: cycle.consistency,
          quiesceFailure: cycle.quiesceFailure,
          group: cycle.group,
          point: cycle.point,
          dataBytes: cycle.dataBytes,
          diskDataBytes: Object.fromEntries(cycle.diskDataBytes),
          diskCompression: Object.fromEntries(cycle.diskCompression),
          zeroBytes: cycle.zeroBytes,
          wireBytes: Number(end.wireBytes) || cycle.wireBytes,
          extents: cycle.extents,
          durationMs: Date.now() - cycle.startedAt,
          comparedBytes: Number(end.comparedBytes) || undefined,
        }),
      );
      faultPoint("crash-after-commit-before-ack");
      await writeWithBackpressure(this.call, {
        body: {
          $case: "cycleAck",
          value: { generation: BigInt(this.generation), cycleSequence: BigInt(seq), recoveryPointId: committed.pointId, committedAt: committed.committedAt },
        },
      });
      this.logger.info(
        {
          vm: vmId,
          seq,
          kind: cycle.kind,
          dataBytes: cycle.dataBytes,
          zeroBytes: cycle.zeroBytes,
          wireBytes: cycle.wireBytes,
          receiveMs: endAt - cycle.startedAt,
          commitMs: Date.now() - endAt,
        },
        "cycle committed",
      );
      this.ctx.afterCommit(vmId);
    } catch (err) {
      const reason = err instanceof RelationshipRefusal ? err.reason : RejectReason.REJECT_REASON_STORAGE_FAILURE;
      await this.failCycle(seq, RejectReason[reason], errorMessage(err), cycle);
      await this.sendCycleRejected(seq, reason, errorMessage(err));
    }
  }

  /** A due cycle the primary did not start, and why: for status and health, never answered. */
  private async onCycleSkipped(skipped: CycleSkipped): Promise<void> {
    const vmId = this.vmId!;
    // A stale primary's report must not touch the current generation's relationship.
    if (Number(skipped.generation) !== this.generation) {
      this.logger.warn({ vm: vmId, generation: Number(skipped.generation), current: this.generation, code: skipped.code }, "CycleSkipped of another generation ignored");
      return;
    }
    const code = skipped.code || "CYCLE_SKIPPED";
    const message = skipped.message || "the primary did not start a due cycle and gave no reason";
    try {
      await this.ctx.serializer.run(vmId, () =>
        this.ctx.relationships.recordCycleSkipped({ vmId, generation: this.generation, code, message, skippedAt: skipped.skippedAt ?? new Date() }),
      );
    } catch (err) {
      // A report in a state where no cycle is due (e.g. paused) is not worth ending the stream.
      this.logger.warn({ vm: vmId, code, err: errorMessage(err) }, "could not record the skipped cycle");
    }
  }

  private async rejectChunk(chunk: ExtentChunk, reason: RejectReason, message: string): Promise<void> {
    const seq = Number(chunk.cycleSequence);
    await writeWithBackpressure(this.call, {
      body: {
        $case: "chunkRejected",
        value: { generation: BigInt(this.generation), cycleSequence: chunk.cycleSequence, diskId: chunk.diskId, offset: chunk.offset, reason, message },
      },
    }).catch(() => undefined);
    await this.refuseCycle(seq, reason, `chunk of disk ${chunk.diskId} at ${chunk.offset} refused: ${message}`);
  }

  /** Discards the cycle's partial point, records the failure and tells the sender to retry later. */
  private async refuseCycle(seq: number, reason: RejectReason, message: string, opts: { record?: boolean } = {}): Promise<void> {
    this.logger.warn({ vm: this.vmId, seq, reason: RejectReason[reason] }, message);
    if (opts.record !== false) await this.failCycle(seq, RejectReason[reason], message);
    this.refusedSeq = seq;
    await this.sendCycleRejected(seq, reason, message);
  }

  private async sendCycleRejected(seq: number, reason: RejectReason, message: string): Promise<void> {
    await writeWithBackpressure(this.call, {
      body: { $case: "cycleRejected", value: { generation: BigInt(this.generation), cycleSequence: BigInt(seq), reason, message } },
    }).catch(() => undefined);
  }

  private async failCycle(seq: number, reason: string, message: string, closed?: OpenCycle): Promise<void> {
    const cycle = closed ?? (this.cycle?.seq === seq ? this.cycle : undefined);
    if (cycle && cycle === this.cycle) this.cycle = undefined;
    if (cycle && !cycle.point.finished) {
      await cycle.point.discard();
      // Retention steps wait while a point is written; with none committed, nothing else resumes them.
      if (this.vmId) this.ctx.afterCommit(this.vmId);
    }
    if (this.vmId)
      await this.ctx.relationships
        .recordCycleFailed({ vmId: this.vmId, seq, generation: this.generation, reason, message })
        .catch((err: unknown) => this.logger.error({ err }, "could not record the failed cycle"));
  }

  private async discardOpenCycle(why: string): Promise<void> {
    if (this.cycle) await this.failCycle(this.cycle.seq, "STREAM_ENDED", why);
  }

  private endWithStatus(code: grpc.status, details: string): void {
    if (this.ending) return;
    this.ending = true;
    const err = Object.assign(new Error(details), { code, details });
    // The error destroys the call; one destroyed while a message (a HelloAck, say) is still being
    // written never sends its status, and the peer waits to its deadline. Hence: written first.
    void untilWritten(this.call).then(() => this.call.emit("error", err));
  }
}
