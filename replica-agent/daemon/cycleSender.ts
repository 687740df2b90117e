import type { ClientDuplexStream } from "@grpc/grpc-js";
import type { Logger } from "../../src/common/logger.js";
import { type ChecksumAlgorithm, Consistency, CycleKind } from "../../src/gen/qreplica/v1/common.js";
import type { RejectReason, ReplicateResponse } from "../../src/gen/qreplica/v1/replication.js";
import type { ChunkDigestName } from "../../src/common/chunkDigest.js";
import { encodeExtentChunkRequest, sendOnReplicate, type OutgoingReplicateRequest } from "../../src/transport/index.js";
import { getCodec } from "../../src/codec/index.js";
import { YoungGc } from "../../src/common/youngGc.js";
import { SnapshotBrokenError, type CaptureCycle } from "../capture/index.js";
import type { ResponseQueue } from "./responseQueue.js";
import { ComparisonHashes } from "./comparisonHashes.js";
import { differingChunks, startResyncHasher, type ResyncStats } from "./differingChunks.js";

const ACK_TIMEOUT_MS = 10 * 60_000;
/**
 * A long cycle (an initial copy, a resync) logs how far it has got, and in which phase, this
 * often: a cycle stuck on a read, a hash or the ack is seen in the log, not only its end.
 */
const PROGRESS_LOG_MS = 10_000;

/** One for the process: the dead buffers of every VM's chunks add up in one heap. */
const youngGc = new YoungGc();

export type ReplicateStream = ClientDuplexStream<OutgoingReplicateRequest, ReplicateResponse>;

export class CycleRefusedError extends Error {
  constructor(
    readonly reason: RejectReason,
    message: string,
  ) {
    super(message);
  }
}

/** A write that fails as soon as the stream does, instead of waiting for a drain that never comes. */
export function send(stream: ReplicateStream, responses: ResponseQueue, message: OutgoingReplicateRequest): Promise<void> {
  return sendOnReplicate(stream, responses, message);
}

export interface CycleSenderOptions {
  vmId: string;
  compressionLevel: number;
  /** The policy the cycle runs under, "name@version" (or "config"), for the log. */
  policy?: string;
  checksum: ChecksumAlgorithm;
  logger: Logger;
  /** Waits as the bandwidth policy says before `wireBytes` more go out (absent: unlimited). */
  throttle?: (wireBytes: number) => Promise<void>;
  /** Told the cycle's sequence once its CycleEnd is out, undefined once acked (see noteUnacknowledged). */
  onEndSent?: (seq: number | undefined) => void;
  /**
   * The digest the replica said (HelloAck) it compares resyncs with: a resync then reads and hashes
   * from its cut-off on, in the shared chunk size, while the site opens its point; its first
   * ResyncHashes confirm the scheme (or the disk is read again in theirs). Undefined: wait for them.
   */
  replicaDigest?: ChunkDigestName;
}

export interface CycleTotals {
  extents: number;
  data: number;
  zero: number;
  wire: number;
}

/**
 * Sends one captured cycle and waits for the site's ack, then confirms it to the capture layer;
 * anything else aborts it (its changes stay for the next cycle). A resync cycle ships only the
 * chunks whose hash differs from the replica's newest point (or seed).
 */
export async function sendCycle(
  stream: ReplicateStream,
  responses: ResponseQueue,
  cycle: CaptureCycle,
  generation: number,
  o: CycleSenderOptions & { resync: boolean },
): Promise<{ totals: CycleTotals; resync?: ResyncStats }> {
  const gen = BigInt(generation);
  const seq = BigInt(cycle.seq);
  const codec = getCodec("zstd");
  const started = Date.now();
  const replica = o.resync ? new ComparisonHashes(o.replicaDigest) : undefined;
  // Started before the CycleBegin goes out: the thread boots while the site opens its point.
  const hasher = o.resync ? startResyncHasher() : undefined;
  const plannedBytes = cycle.disks.reduce((n, d) => n + (o.resync ? d.sizeAtCutoff : d.dirtyBytes), 0);
  const resyncStats: ResyncStats = { comparedBytes: 0, differingBytes: 0 };
  const totals: CycleTotals = { extents: 0, data: 0, zero: 0, wire: 0 };
  let phase = o.resync ? "comparing with the replica's hashes" : "reading and sending";
  const progressLog = setInterval(() => {
    const bytesDone = o.resync ? resyncStats.comparedBytes : totals.data + totals.zero;
    o.logger.info(
      { vm: o.vmId, seq: cycle.seq, kind: o.resync ? "resync" : cycle.kind, phase, bytesDone, bytesTotal: plannedBytes, wireBytes: totals.wire, ms: Date.now() - started },
      "cycle progress",
    );
  }, PROGRESS_LOG_MS);
  try {
    await send(stream, responses, {
      body: {
        $case: "cycleBegin",
        value: {
          vmId: o.vmId,
          generation: gen,
          cycleSequence: seq,
          kind: o.resync ? CycleKind.CYCLE_KIND_RESYNC : cycle.kind === "full" ? CycleKind.CYCLE_KIND_INITIAL : CycleKind.CYCLE_KIND_INCREMENTAL,
          cutoffTime: cycle.cutoffAt,
          consistency: cycle.consistency === "application" ? Consistency.CONSISTENCY_APPLICATION : Consistency.CONSISTENCY_CRASH,
          disks: cycle.disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeAtCutoff) })),
          quiesceFailure: cycle.quiesceFailure ?? "",
          // For the site's progress report (GetStatus); a resync compares the whole disks.
          plannedBytes: BigInt(plannedBytes),
          groupId: cycle.group?.groupId ?? "",
          groupCutoffId: cycle.group?.cutoffId ?? "",
          groupMembers: cycle.group?.members ?? [],
          groupPauseMs: cycle.group?.groupPauseMs ?? 0,
        },
      },
    });
    const pump = replica ? receiveReplicaHashes(responses, replica, cycle) : undefined;
    let pumping = pump !== undefined;
    void pump?.finally(() => (pumping = false)).catch(() => undefined);
    for (const disk of cycle.disks) {
      const extents = replica ? differingChunks(disk, replica, resyncStats, hasher) : disk.extents();
      for await (const extent of extents) {
        // While the hashes stream in, the pump reads the responses (and sees any refusal).
        const early = pumping ? undefined : responses.poll();
        if (early) throwIfRejected(early, cycle.seq, o);
        const chunk = encodeExtentChunkRequest(extent, { generation: gen, cycleSeq: seq, diskId: disk.diskId, codec, level: o.compressionLevel, checksum: o.checksum });
        totals.extents++;
        if (extent.kind === "data") totals.data += extent.length;
        else totals.zero += extent.length;
        totals.wire += chunk.wireBytes;
        await o.throttle?.(chunk.wireBytes);
        await send(stream, responses, chunk.request);
        youngGc.note(chunk.wireBytes);
      }
    }
    phase = "waiting for the rest of the replica's hashes";
    await pump;
    o.onEndSent?.(cycle.seq);
    await send(stream, responses, {
      body: {
        $case: "cycleEnd",
        value: {
          generation: gen,
          cycleSequence: seq,
          extentCount: BigInt(totals.extents),
          dataBytes: BigInt(totals.data),
          zeroBytes: BigInt(totals.zero),
          wireBytes: BigInt(totals.wire),
          comparedBytes: BigInt(resyncStats.comparedBytes),
        },
      },
    });
    phase = "waiting for the replica site's ack";
    for (;;) {
      const r = await responses.next(ACK_TIMEOUT_MS);
      throwIfRejected(r, cycle.seq, o);
      if (r.body?.$case === "cycleAck" && Number(r.body.value.cycleSequence) === cycle.seq) break;
    }
    o.onEndSent?.(undefined);
    await cycle.confirm();
    o.logger.info(
      {
        vm: o.vmId,
        seq: cycle.seq,
        kind: o.resync ? "resync" : cycle.kind,
        vcpuPauseMs: cycle.vcpuPauseMs,
        ...totals,
        ...(o.resync ? resyncStats : {}),
        ms: Date.now() - started,
        compressionLevel: o.compressionLevel,
        policy: o.policy,
      },
      "cycle acknowledged by the replica site",
    );
    return { totals, resync: o.resync ? resyncStats : undefined };
  } catch (err) {
    phase = `aborting (${(err as Error).message})`;
    replica?.fail(err as Error);
    if (!cycle.finished) await cycle.abort(err);
    if (err instanceof SnapshotBrokenError) {
      // The site records it as a failed cycle with this message (status, events).
      await send(stream, responses, { body: { $case: "cycleAbort", value: { generation: gen, cycleSequence: seq, message: `${err.code}: ${err.message}` } } }).catch(
        () => undefined,
      );
    }
    throw err;
  } finally {
    clearInterval(progressLog);
    await hasher?.close();
  }
}

/** The replica's chunk hashes, sent right after a RESYNC CycleBegin, handed over as they arrive. */
async function receiveReplicaHashes(responses: ResponseQueue, replica: ComparisonHashes, cycle: CaptureCycle): Promise<void> {
  const diskIds = cycle.disks.map((d) => d.diskId);
  try {
    while (!replica.complete(diskIds)) {
      const r = await responses.next(10 * 60_000);
      const body = r.body;
      if (body?.$case === "cycleRejected" && Number(body.value.cycleSequence) === cycle.seq) {
        throw new CycleRefusedError(body.value.reason, `cycle ${cycle.seq} refused: ${body.value.message}`);
      }
      if (body?.$case === "resyncHashes") replica.add(body.value);
    }
  } catch (err) {
    replica.fail(err as Error);
    throw err;
  }
}

export function throwIfRejected(r: ReplicateResponse, seq: number, o: { vmId: string; logger: Logger }): void {
  const body = r.body;
  if (body?.$case === "cycleRejected" && Number(body.value.cycleSequence) === seq) {
    throw new CycleRefusedError(body.value.reason, `cycle ${seq} refused: ${body.value.message}`);
  }
  if (body?.$case === "chunkRejected") o.logger.warn({ vm: o.vmId, seq, message: body.value.message }, "chunk refused by the replica site");
}
