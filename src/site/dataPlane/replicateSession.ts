import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../../common/logger.js";
import { errorMessage } from "../../common/errors.js";
import { ResyncMode, RejectReason, type EffectivePolicy, type Hello, type ReplicateRequest, type ReplicateResponse } from "../../gen/qreplica/v1/replication.js";
import {
  limitReadAhead,
  peerIdentity,
  pickResyncDigest,
  REPLICATE_READ_AHEAD_MESSAGES,
  untilWritten,
  writeWithBackpressure,
  type CertificateIdentity,
  type Role,
} from "../../transport/index.js";
import { peerHost } from "../controlPlane/refusalAudit.js";
import { MAX_CHUNK_BYTES } from "./openCycle.js";
import { acceptedChecksumsOf, helloAckFor, helloRefusal, PROTOCOL_VERSION, relationshipHello, RESUME_HINT } from "./helloAdmission.js";
import { UNDECODABLE } from "../tolerantDecoding.js";
import type { SiteContext } from "../siteContext.js";
import { RelationshipRefusal, type ResumeKind } from "../relationships/relationships.js";
import { CycleReceiver } from "./cycleReceiver.js";

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
  /** The cycles after an accepted Hello (none before it). */
  private receiver: CycleReceiver | undefined;
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

  /** The peer is a site forwarding its points (extended replication), not an agent: it has no VM to stop. */
  forwardingSite = false;

  /** The agent config's initial replication choice, as its Hello said (for status before the first point). */
  initialChoice: { kind: string; at?: Date } | undefined;

  /** The cycle being received now, for GetStatus's progress; undefined between cycles. */
  cycleInProgress(): ReturnType<CycleReceiver["cycleInProgress"]> {
    return this.receiver?.cycleInProgress();
  }

  /**
   * Operator commands reach the connected agent over its open stream: a resync to run now, a
   * pause (no cycle until resumed; the agent keeps its changes), a resume.
   */
  async notify(
    notice:
      | { $case: "resyncRequested"; requestedBy: string }
      | { $case: "replicationPaused"; reason: string }
      | { $case: "replicationResumed"; resume: ResumeKind }
      | { $case: "failoverCancelled"; cancelledBy: string; generation: number },
  ): Promise<void> {
    const generation = BigInt(this.generation);
    const body =
      notice.$case === "failoverCancelled"
        ? { $case: "failoverCancelled" as const, value: { generation: BigInt(notice.generation), cancelledBy: notice.cancelledBy } }
        : notice.$case === "resyncRequested"
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
      await this.receiver?.discardOpenCycle("the stream ended before the cycle was complete");
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
        return this.receiver!.onCycleBegin(body.value);
      case "extentChunk":
        return this.receiver!.onChunk(body.value);
      case "cycleEnd":
        return this.receiver!.onCycleEnd(body.value);
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
        return this.receiver!.onCycleSkipped(body.value);
      case "cycleAbort":
        return this.receiver!.onCycleAbort(body.value);
    }
  }

  private async onHello(hello: Hello, identity: string): Promise<void> {
    if (this.vmId !== undefined) return this.endWithStatus(grpc.status.FAILED_PRECONDITION, "a second Hello on the same stream");
    const refused = await helloRefusal(this.ctx, hello, { identity, role: this.peerRole, certificate: this.peerCertificate, host: peerHost(this.call.getPeer()) });
    if (refused) return this.refuseHello(hello, identity, refused.reason, refused.message, refused.status);
    try {
      const accepted = await this.ctx.relationships.acceptHello(await relationshipHello(this.ctx, hello, identity));
      const acceptedChecksums = acceptedChecksumsOf(hello);
      const resyncDigest = pickResyncDigest(hello.resyncDigests, this.ctx.storage.indexDigest);
      const receiver = new CycleReceiver(this.ctx, this.call, this.logger, { vmId: hello.vmId, generation: accepted.generation, acceptedChecksums, resyncDigest });
      // Set together: every message after Hello (the vmId says it came) goes to the receiver.
      this.vmId = hello.vmId;
      this.receiver = receiver;
      this.generation = accepted.generation;
      this.forwardingSite = hello.forwardingSite === true;
      this.initialChoice = { kind: hello.initialReplication || "now", ...(hello.initialReplicationAt ? { at: hello.initialReplicationAt } : {}) };
      await this.ctx.policies.atHello(hello.vmId, {
        policyName: hello.policyName,
        intervalSeconds: hello.configuredIntervalSeconds,
        compressionLevel: hello.configuredCompressionLevel,
        resync: hello.resyncMode === ResyncMode.RESYNC_MODE_MANUAL ? "manual" : "automatic",
        identity,
      });
      this.ctx.claimSession(hello.vmId, this);
      if (this.peerCertificate) this.ctx.health?.noteAgentCertificate(hello.vmId, this.peerCertificate);
      await writeWithBackpressure(this.call, { body: { $case: "helloAck", value: helloAckFor(this.ctx, hello.vmId, accepted, acceptedChecksums, resyncDigest) } });
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
        return this.refuseHello(hello, identity, err.reason, err.message, status, err.currentGeneration);
      }
      throw err;
    }
  }

  private async refuseHello(hello: Hello, identity: string, reason: RejectReason, message: string, status: grpc.status, currentGeneration = 0): Promise<void> {
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
