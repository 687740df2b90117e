import { getCodec } from "../../codec/index.js";
import type { Logger } from "../../common/logger.js";
import { type ChecksumAlgorithm, Consistency, type CycleKind } from "../../gen/qreplica/v1/common.js";
import { RejectReason, type CycleAck, type ReplicateResponse } from "../../gen/qreplica/v1/replication.js";
import type { RecoveryPoint } from "../../ledger/index.js";
import { encodeExtentChunkRequest, type ExtentPiece } from "../../transport/index.js";
import { send, type ForwardStream, type Responses } from "./replicateClient.js";

const ACK_TIMEOUT_MS = 10 * 60_000;

/** One cycle a forwarder sends: the third site's generation and sequence, how its chunks are encoded. */
export interface ForwardCycle {
  vmId: string;
  generation: number;
  seq: number;
  checksum: ChecksumAlgorithm;
  compressionLevel: number;
  /** "forwarded" or "resync", in messages. */
  what: string;
}

export interface ForwardTotals {
  extents: number;
  data: number;
  zero: number;
  wire: number;
}

export const noTotals = (): ForwardTotals => ({ extents: 0, data: 0, zero: 0, wire: 0 });

/** CycleBegin for a point of this site: its cut-off and consistency are the primary's. */
export function sendCycleBegin(stream: ForwardStream, responses: Responses, c: ForwardCycle, point: RecoveryPoint, kind: CycleKind, plannedBytes = 0): Promise<void> {
  return send(stream, responses, {
    body: {
      $case: "cycleBegin",
      value: {
        vmId: c.vmId,
        generation: BigInt(c.generation),
        cycleSequence: BigInt(c.seq),
        kind,
        cutoffTime: new Date(point.cutoffAt),
        consistency: point.consistency === "application" ? Consistency.CONSISTENCY_APPLICATION : Consistency.CONSISTENCY_CRASH,
        disks: point.disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeBytes) })),
        quiesceFailure: "",
        plannedBytes: BigInt(plannedBytes),
        // A consistency group is the primary agent's; the third site gets each member's points on their own.
        groupId: "",
        groupCutoffId: "",
        groupMembers: [],
        groupPauseMs: 0,
      },
    },
  });
}

/** A disk's extents as checksummed zstd chunks, added to `totals`; a refusal that arrived meanwhile ends it. */
export async function sendDiskExtents(
  stream: ForwardStream,
  responses: Responses,
  c: ForwardCycle,
  diskId: string,
  extents: AsyncIterable<ExtentPiece>,
  totals: ForwardTotals,
  logger: Logger,
): Promise<void> {
  const codec = getCodec("zstd");
  for await (const extent of extents) {
    const early = responses.poll();
    if (early) throwIfRejected(early, c, logger);
    const chunk = encodeExtentChunkRequest(extent, { generation: c.generation, cycleSeq: c.seq, diskId, codec, level: c.compressionLevel, checksum: c.checksum });
    totals.extents++;
    if (extent.kind === "data") totals.data += extent.length;
    else totals.zero += extent.length;
    totals.wire += chunk.wireBytes;
    await send(stream, responses, chunk.request);
  }
}

/** CycleEnd with the totals, then the third site's ack once its point is durable. */
export async function endCycle(stream: ForwardStream, responses: Responses, c: ForwardCycle, totals: ForwardTotals, logger: Logger, comparedBytes = 0): Promise<CycleAck> {
  const seq = BigInt(c.seq);
  await send(stream, responses, {
    body: {
      $case: "cycleEnd",
      value: {
        generation: BigInt(c.generation),
        cycleSequence: seq,
        extentCount: BigInt(totals.extents),
        dataBytes: BigInt(totals.data),
        zeroBytes: BigInt(totals.zero),
        wireBytes: BigInt(totals.wire),
        comparedBytes: BigInt(comparedBytes),
      },
    },
  });
  for (;;) {
    const r = await responses.next(ACK_TIMEOUT_MS);
    throwIfRejected(r, c, logger);
    if (r.body?.$case === "cycleAck" && r.body.value.cycleSequence === seq) return r.body.value;
  }
}

/** A refusal of this cycle ends it; a refused chunk is logged (the cycle's refusal follows). */
export function throwIfRejected(r: ReplicateResponse, c: Pick<ForwardCycle, "seq" | "vmId" | "what">, logger: Logger): void {
  const body = r.body;
  if (body?.$case === "cycleRejected" && Number(body.value.cycleSequence) === c.seq) {
    throw new Error(`the third site refused ${c.what} cycle ${c.seq} (${RejectReason[body.value.reason]}): ${body.value.message}`);
  }
  if (body?.$case === "chunkRejected") logger.warn({ vm: c.vmId, seq: c.seq, message: body.value.message }, "chunk refused by the third site");
}
