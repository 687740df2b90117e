import type * as grpc from "@grpc/grpc-js";
import type { ChunkDigestName } from "../../common/chunkDigest.js";
import { errorMessage } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import { type ChecksumAlgorithm, Consistency, CycleKind } from "../../gen/qreplica/v1/common.js";
import {
  type CycleAbort,
  type CycleBegin,
  type CycleEnd,
  type CycleSkipped,
  type ExtentChunk,
  RejectReason,
  type ReplicateRequest,
  type ReplicateResponse,
} from "../../gen/qreplica/v1/replication.js";
import type { PointGroup } from "../../ledger/index.js";
import { writeWithBackpressure } from "../../transport/index.js";
import { RelationshipRefusal } from "../relationships/relationships.js";
import type { SiteContext } from "../siteContext.js";
import { commitAndAck } from "./cycleCommit.js";
import { OpenCycle } from "./openCycle.js";
import { sendSeedHashes } from "./resync.js";

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

/** What an accepted Hello settled for the cycles that follow it on the stream. */
export interface AcceptedHello {
  vmId: string;
  generation: number;
  /** The checksums both sides know. */
  acceptedChecksums: ChecksumAlgorithm[];
  /** What this agent's resyncs compare chunks with. */
  resyncDigest: ChunkDigestName;
}

/**
 * The cycles of one Replicate stream after its Hello: CycleBegin opens a partial point,
 * ExtentChunks fill it, CycleEnd checks the totals and commits it; any refusal discards the
 * partial point, records the failure and tells the sender.
 */
export class CycleReceiver {
  private cycle: OpenCycle | undefined;
  /** A cycle refused mid-way: its remaining chunks are dropped until its end or abort. */
  private refusedSeq: number | undefined;

  constructor(
    private readonly ctx: SiteContext,
    private readonly call: grpc.ServerDuplexStream<ReplicateRequest, ReplicateResponse>,
    private readonly logger: Logger,
    private readonly hello: AcceptedHello,
  ) {}

  /** The cycle being received now, for GetStatus's progress; undefined between cycles. */
  cycleInProgress(): { seq: number; kind: "full" | "incremental" | "resync"; startedAt: Date; bytesDone: number; bytesTotal: number; wireBytes: number } | undefined {
    const c = this.cycle;
    return c ? { seq: c.seq, kind: c.kind, startedAt: new Date(c.startedAt), ...c.progress() } : undefined;
  }

  async onCycleBegin(begin: CycleBegin): Promise<void> {
    const { vmId, generation } = this.hello;
    const seq = Number(begin.cycleSequence);
    // Refused without a CycleFailed: a message of another generation must not touch this one's
    // relationship (it would consume the sequence number and count as this primary's failure).
    if (Number(begin.generation) !== generation)
      return this.refuseCycle(seq, RejectReason.REJECT_REASON_STALE_GENERATION, `generation ${begin.generation} is not the current ${generation}`, { record: false });
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
          generation,
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
        await sendSeedHashes(this.ctx, this.call, { vmId, generation, seq, disks, point }, this.hello.resyncDigest);
      }
    } catch (err) {
      if (err instanceof RelationshipRefusal) return this.refuseCycle(seq, err.reason, err.message);
      return this.refuseCycle(seq, RejectReason.REJECT_REASON_STORAGE_FAILURE, errorMessage(err));
    }
  }

  async onChunk(chunk: ExtentChunk): Promise<void> {
    const seq = Number(chunk.cycleSequence);
    if (this.refusedSeq === seq) return;
    const cycle = this.cycle;
    if (!cycle || cycle.seq !== seq) return this.refuseCycle(seq, RejectReason.REJECT_REASON_OUT_OF_ORDER, `chunk for cycle ${seq}, which is not open`);
    if (Number(chunk.generation) !== this.hello.generation)
      return this.rejectChunk(chunk, RejectReason.REJECT_REASON_STALE_GENERATION, `generation ${chunk.generation} is not the current ${this.hello.generation}`);
    const refused = await cycle.apply(chunk, this.hello.acceptedChecksums);
    if (refused) return this.rejectChunk(chunk, refused.reason, refused.message);
  }

  async onCycleEnd(end: CycleEnd): Promise<void> {
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
    const { vmId, generation } = this.hello;
    try {
      await commitAndAck(this.ctx, this.call, this.logger, cycle, { vmId, generation, seq, end, endAt: Date.now() });
    } catch (err) {
      const reason = err instanceof RelationshipRefusal ? err.reason : RejectReason.REJECT_REASON_STORAGE_FAILURE;
      // Said here as a refusal is: otherwise the log shows the point discarded and nothing of why.
      this.logger.warn({ vm: vmId, seq, reason: RejectReason[reason], err: errorMessage(err) }, "cycle could not be committed");
      await this.failCycle(seq, RejectReason[reason], errorMessage(err), cycle);
      await this.sendCycleRejected(seq, reason, errorMessage(err));
    }
  }

  async onCycleAbort(abort: CycleAbort): Promise<void> {
    if (this.cycle && BigInt(this.cycle.seq) === abort.cycleSequence) {
      this.logger.warn({ vm: this.hello.vmId, seq: this.cycle.seq, message: abort.message }, "cycle aborted by the sender");
      await this.failCycle(this.cycle.seq, "ABORTED_BY_SENDER", abort.message || "the sender aborted the cycle");
    }
    this.refusedSeq = undefined;
  }

  /** A due cycle the primary did not start, and why: for status and health, never answered. */
  async onCycleSkipped(skipped: CycleSkipped): Promise<void> {
    const { vmId, generation } = this.hello;
    // A stale primary's report must not touch the current generation's relationship.
    if (Number(skipped.generation) !== generation) {
      this.logger.warn({ vm: vmId, generation: Number(skipped.generation), current: generation, code: skipped.code }, "CycleSkipped of another generation ignored");
      return;
    }
    const code = skipped.code || "CYCLE_SKIPPED";
    const message = skipped.message || "the primary did not start a due cycle and gave no reason";
    try {
      await this.ctx.serializer.run(vmId, () => this.ctx.relationships.recordCycleSkipped({ vmId, generation, code, message, skippedAt: skipped.skippedAt ?? new Date() }));
    } catch (err) {
      // A report in a state where no cycle is due (e.g. paused) is not worth ending the stream.
      this.logger.warn({ vm: vmId, code, err: errorMessage(err) }, "could not record the skipped cycle");
    }
  }

  /** The stream ended: a cycle still open is discarded and recorded as failed. */
  async discardOpenCycle(why: string): Promise<void> {
    if (!this.cycle) return;
    this.logger.info({ vm: this.hello.vmId, seq: this.cycle.seq, why }, "stream ended with a cycle open");
    await this.failCycle(this.cycle.seq, "STREAM_ENDED", why);
  }

  private async rejectChunk(chunk: ExtentChunk, reason: RejectReason, message: string): Promise<void> {
    const seq = Number(chunk.cycleSequence);
    await writeWithBackpressure(this.call, {
      body: {
        $case: "chunkRejected",
        value: { generation: BigInt(this.hello.generation), cycleSequence: chunk.cycleSequence, diskId: chunk.diskId, offset: chunk.offset, reason, message },
      },
    }).catch(() => undefined);
    await this.refuseCycle(seq, reason, `chunk of disk ${chunk.diskId} at ${chunk.offset} refused: ${message}`);
  }

  /** Discards the cycle's partial point, records the failure and tells the sender to retry later. */
  private async refuseCycle(seq: number, reason: RejectReason, message: string, opts: { record?: boolean } = {}): Promise<void> {
    this.logger.warn({ vm: this.hello.vmId, seq, reason: RejectReason[reason] }, message);
    if (opts.record !== false) await this.failCycle(seq, RejectReason[reason], message);
    this.refusedSeq = seq;
    await this.sendCycleRejected(seq, reason, message);
  }

  private async sendCycleRejected(seq: number, reason: RejectReason, message: string): Promise<void> {
    await writeWithBackpressure(this.call, {
      body: { $case: "cycleRejected", value: { generation: BigInt(this.hello.generation), cycleSequence: BigInt(seq), reason, message } },
    }).catch(() => undefined);
  }

  private async failCycle(seq: number, reason: string, message: string, closed?: OpenCycle): Promise<void> {
    const { vmId, generation } = this.hello;
    const cycle = closed ?? (this.cycle?.seq === seq ? this.cycle : undefined);
    if (cycle && cycle === this.cycle) this.cycle = undefined;
    if (cycle && !cycle.point.finished) {
      await cycle.point.discard();
      // Retention steps wait while a point is written; with none committed, nothing else resumes them.
      this.ctx.afterCommit(vmId);
    }
    await this.ctx.relationships
      .recordCycleFailed({ vmId, seq, generation, reason, message })
      .catch((err: unknown) => this.logger.error({ err }, "could not record the failed cycle"));
  }
}
