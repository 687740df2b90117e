import type * as grpc from "@grpc/grpc-js";
import { faultPoint } from "../../common/faultPoints.js";
import type { Logger } from "../../common/logger.js";
import type { CycleEnd, ReplicateRequest, ReplicateResponse } from "../../gen/qreplica/v1/replication.js";
import { writeWithBackpressure } from "../../transport/index.js";
import type { SiteContext } from "../siteContext.js";
import type { OpenCycle } from "./openCycle.js";

/**
 * A received cycle whose totals matched: its point committed (durable, then in the ledger), and
 * only then acked (invariants 2 and 5). What the commit or the ack throws is the caller's to
 * record as the cycle's failure.
 */
export async function commitAndAck(
  ctx: SiteContext,
  call: grpc.ServerDuplexStream<ReplicateRequest, ReplicateResponse>,
  logger: Logger,
  cycle: OpenCycle,
  at: { vmId: string; generation: number; seq: number; end: CycleEnd; endAt: number },
): Promise<void> {
  const { vmId, generation, seq, end, endAt } = at;
  const committed = await ctx.serializer.run(vmId, () =>
    ctx.relationships.commitCycle({
      vmId,
      seq,
      kind: cycle.kind,
      generation,
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
  await writeWithBackpressure(call, {
    body: {
      $case: "cycleAck",
      value: { generation: BigInt(generation), cycleSequence: BigInt(seq), recoveryPointId: committed.pointId, committedAt: committed.committedAt },
    },
  });
  logger.info(
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
  ctx.afterCommit(vmId);
}
