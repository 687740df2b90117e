import { getCodec } from "../../codec/index.js";
import type { ChunkDigestName } from "../../common/chunkDigest.js";
import type { Logger } from "../../common/logger.js";
import { type ChecksumAlgorithm, Consistency, CycleKind } from "../../gen/qreplica/v1/common.js";
import { RejectReason, ResumeHint, type HelloAck, type ReplicateResponse } from "../../gen/qreplica/v1/replication.js";
import type { RecoveryPoint, RelationshipState } from "../../ledger/index.js";
import type { ReplicaStorage } from "../../storage/index.js";
import { digestFromWire, encodeExtentChunkRequest } from "../../transport/index.js";
import type { ExtensionLedger, ExtensionState } from "./extensionLedger.js";
import { send, type ForwardStream, type Responses } from "./replicateClient.js";

const HASHES_TIMEOUT_MS = 10 * 60_000;
const ACK_TIMEOUT_MS = 10 * 60_000;

/** What a forwarder sends next on a stream. "wait": the third site's operator approves a resync first. */
export type ForwardMode = "full" | "incremental" | "resync" | "wait";

/**
 * The third site's HelloAck says how forwarding goes on: the first point whole, incrementals on the
 * last forwarded point, or a resync by comparison (the third site lost track: an operator asked
 * for one, or its newest point is not the one this site last forwarded, see Hello.forwarded_point_id).
 */
export function forwardModeFrom(ack: HelloAck, target: { targetSiteId: string; vmId: string; forwardedCount: number }): ForwardMode {
  const hint = ack.resumeHint;
  if (hint === ResumeHint.RESUME_HINT_INITIAL_REPLICATION) return "full";
  if (hint === ResumeHint.RESUME_HINT_RESYNC) return "resync";
  if (hint === ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR) {
    if (ack.resyncReason) return "wait";
    throw new Error(`site ${target.targetSiteId} has this VM's replication paused: forwarding goes on once it is resumed there`);
  }
  if (hint !== ResumeHint.RESUME_HINT_INCREMENTAL) throw new Error(`site ${target.targetSiteId} answered with an unknown resume hint ${hint}`);
  // A third site that predates Hello.forwarded_point_id cannot tell: its points are not ours to build on.
  if (target.forwardedCount === 0) {
    throw new Error(
      `site ${target.targetSiteId} already holds points of VM ${target.vmId} that this site did not forward: upgrade it (it then asks for a resync), or remove the VM there`,
    );
  }
  return "incremental";
}

/**
 * The point last forwarded is no longer on this site (its ledger or storage restored from before
 * it): no incremental can be cut above it, so the Hello reports the loss as an agent reports lost
 * change tracking, and the third site asks for a resync.
 */
export function forwardingLost(rel: RelationshipState, last: { pointId: string } | undefined, siteId: string): Array<{ diskId: string; code: string; reason: string }> {
  const newest = rel.points.at(-1);
  if (!last || !newest || rel.points.some((p) => p.pointId === last.pointId)) return [];
  const reason = `point ${last.pointId}, the last forwarded, is no longer on site ${siteId}: the changes since it cannot be told apart`;
  return newest.disks.map((d) => ({ diskId: d.diskId, code: "FORWARDED_POINT_GONE", reason }));
}

/** This site's chunk hash index of a point's disk, copied (a point written next takes the index over and writes over it). */
export interface OwnIndex {
  hashes: Buffer;
  chunkBytes: number;
  digest: ChunkDigestName;
}

/** The point's indexes, per disk, where it has one. Call where no point of the VM is being begun (its serialized work). */
export function copyOwnIndexes(storage: Pick<ReplicaStorage, "loadChunkHashes" | "indexDigest">, vmId: string, point: RecoveryPoint): Map<string, OwnIndex> {
  const out = new Map<string, OwnIndex>();
  for (const d of point.disks) {
    const r = storage.loadChunkHashes(vmId, d.diskId, point.cycleSeq, d.sizeBytes);
    if ("hashes" in r) out.set(d.diskId, { hashes: Buffer.from(r.hashes), chunkBytes: r.chunkBytes, digest: storage.indexDigest });
  }
  return out;
}

export interface ResyncCycle {
  vmId: string;
  seq: number;
  generation: number;
  maxChunk: number;
  checksum: ChecksumAlgorithm;
  compressionLevel: number;
}

export interface ResyncOutcome {
  recoveryPointId: string;
  totals: { extents: number; data: number; zero: number; wire: number };
  comparedBytes: number;
  /** Per disk, where this site's hashes came from: its point's index, or a read of the point. */
  ownHashes: Record<string, "index" | "read">;
  hashMs: number;
}

/**
 * One resync cycle to the third site, as an agent's after lost change tracking: CycleBegin RESYNC
 * with the point's cut-off, the third site answers with the chunk hashes of its newest point
 * (ResyncHashes, disk after disk), and only the chunks whose hash differs from this site's point
 * travel. The third site writes them over its newest point: an ordinary point, the older ones kept.
 * This site's hashes come from the point's chunk hash index when its chunk size and digest are the
 * third site's (nothing read but what differs); else the point is read and hashed here.
 */
export async function sendResyncCycle(
  stream: ForwardStream,
  responses: Responses,
  x: { storage: Pick<ReplicaStorage, "pointExtents" | "seedChunkHashes">; logger: Logger },
  point: RecoveryPoint,
  indexes: Map<string, OwnIndex>,
  c: ResyncCycle,
): Promise<ResyncOutcome> {
  const gen = BigInt(c.generation);
  const seq = BigInt(c.seq);
  const out: ResyncOutcome = { recoveryPointId: "", totals: { extents: 0, data: 0, zero: 0, wire: 0 }, comparedBytes: 0, ownHashes: {}, hashMs: 0 };
  await send(stream, responses, {
    body: {
      $case: "cycleBegin",
      value: {
        vmId: c.vmId,
        generation: gen,
        cycleSequence: seq,
        kind: CycleKind.CYCLE_KIND_RESYNC,
        cutoffTime: new Date(point.cutoffAt),
        consistency: point.consistency === "application" ? Consistency.CONSISTENCY_APPLICATION : Consistency.CONSISTENCY_CRASH,
        disks: point.disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeBytes) })),
        quiesceFailure: "",
        plannedBytes: BigInt(point.disks.reduce((n, d) => n + d.sizeBytes, 0)),
        groupId: "",
        groupCutoffId: "",
        groupMembers: [],
        groupPauseMs: 0,
      },
    },
  });
  const codec = getCodec("zstd");
  for (const disk of point.disks) {
    const theirs = await theirHashes(responses, disk.diskId, c.seq);
    const started = performance.now();
    const index = indexes.get(disk.diskId);
    const usable = index && index.chunkBytes === theirs.chunkBytes && index.digest === theirs.digest;
    out.ownHashes[disk.diskId] = usable ? "index" : "read";
    const ours = usable ? splitHashes(index.hashes) : await collect(x.storage.seedChunkHashes(disk.imagePath, theirs.chunkBytes, theirs.digest));
    out.hashMs += performance.now() - started;
    const ranges = differingRanges(ours, theirs.hashes, theirs.chunkBytes, disk.sizeBytes);
    out.comparedBytes += disk.sizeBytes;
    for await (const extent of x.storage.pointExtents(disk.imagePath, { ranges, pieceBytes: c.maxChunk })) {
      const early = responses.poll();
      if (early) throwIfRejected(early, c.seq, x.logger, c.vmId);
      const chunk = encodeExtentChunkRequest(extent, { generation: c.generation, cycleSeq: c.seq, diskId: disk.diskId, codec, level: c.compressionLevel, checksum: c.checksum });
      out.totals.extents++;
      if (extent.kind === "data") out.totals.data += extent.length;
      else out.totals.zero += extent.length;
      out.totals.wire += chunk.wireBytes;
      await send(stream, responses, chunk.request);
    }
  }
  const t = out.totals;
  await send(stream, responses, {
    body: {
      $case: "cycleEnd",
      value: {
        generation: gen,
        cycleSequence: seq,
        extentCount: BigInt(t.extents),
        dataBytes: BigInt(t.data),
        zeroBytes: BigInt(t.zero),
        wireBytes: BigInt(t.wire),
        comparedBytes: BigInt(out.comparedBytes),
      },
    },
  });
  for (;;) {
    const r = await responses.next(ACK_TIMEOUT_MS);
    throwIfRejected(r, c.seq, x.logger, c.vmId);
    if (r.body?.$case === "cycleAck" && r.body.value.cycleSequence === seq) {
      out.recoveryPointId = r.body.value.recoveryPointId;
      return out;
    }
  }
}

/**
 * The newest point as a resync cycle, its chains held while it is read, and recorded as forwarded
 * (kind "resync", with the bytes compared) once the third site acknowledged it.
 */
export async function forwardNewestAsResync(x: {
  stream: ForwardStream;
  responses: Responses;
  pick: () => Promise<{ point: RecoveryPoint; indexes: Map<string, OwnIndex>; release: () => void }>;
  afterRead: () => void;
  storage: Pick<ReplicaStorage, "pointExtents" | "seedChunkHashes">;
  ledger: ExtensionLedger;
  logger: Logger;
  cycle: ResyncCycle;
}): Promise<ExtensionState> {
  const started = Date.now();
  const c = x.cycle;
  const { point, indexes, release } = await x.pick();
  let r: ResyncOutcome;
  try {
    r = await sendResyncCycle(x.stream, x.responses, x, point, indexes, c);
  } finally {
    release();
    x.afterRead();
  }
  const state = await x.ledger.recordForwarded(c.vmId, {
    pointId: point.pointId,
    cutoffAt: point.cutoffAt,
    targetPointId: r.recoveryPointId,
    targetSeq: c.seq,
    targetGeneration: c.generation,
    kind: "resync",
    dataBytes: r.totals.data,
    wireBytes: r.totals.wire,
    comparedBytes: r.comparedBytes,
  });
  x.logger.info(
    {
      vm: c.vmId,
      point: point.pointId,
      targetPoint: r.recoveryPointId,
      seq: c.seq,
      ...r.totals,
      comparedBytes: r.comparedBytes,
      ownHashes: r.ownHashes,
      hashMs: Math.round(r.hashMs),
      ms: Date.now() - started,
    },
    "point forwarded to the third site as a resync by comparison",
  );
  return state;
}

/** The third site's hashes of one disk, as they arrive after the CycleBegin (disks in its order). */
async function theirHashes(responses: Responses, diskId: string, seq: number): Promise<{ chunkBytes: number; digest: ChunkDigestName; hashes: Buffer[] }> {
  const hashes: Buffer[] = [];
  let scheme: { chunkBytes: number; digest: ChunkDigestName } | undefined;
  for (;;) {
    const r = await responses.next(HASHES_TIMEOUT_MS);
    const body = r.body;
    if (body?.$case === "cycleRejected" && Number(body.value.cycleSequence) === seq) {
      throw new Error(`the third site refused resync cycle ${seq} (${RejectReason[body.value.reason]}): ${body.value.message}`);
    }
    if (body?.$case !== "resyncHashes" || Number(body.value.cycleSequence) !== seq) continue;
    const h = body.value;
    if (h.diskId !== diskId) throw new Error(`the third site sent the hashes of disk ${h.diskId} while those of disk ${diskId} were due`);
    const digest = digestFromWire(h.digest);
    if (!digest) throw new Error(`the third site compares disk ${diskId} with chunk digest ${h.digest}, which this site does not know: upgrade this site`);
    scheme ??= { chunkBytes: h.chunkBytes, digest };
    if (Number(h.firstChunk) !== hashes.length)
      throw new Error(`the third site's hashes of disk ${diskId} arrived out of order (chunk ${h.firstChunk}, expected ${hashes.length})`);
    for (const x of h.hashes) hashes.push(x);
    if (h.last) return { ...scheme, hashes };
  }
}

function splitHashes(all: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < all.length; at += 32) out.push(all.subarray(at, at + 32));
  return out;
}

async function collect(hashes: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const h of hashes) out.push(h);
  return out;
}

/**
 * The byte ranges whose chunks differ (adjacent ones joined): a chunk the third site has no hash
 * for (beyond its image's end) differs. The last chunk may be short.
 */
export function differingRanges(ours: readonly Buffer[], theirs: readonly Buffer[], chunkBytes: number, sizeBytes: number): Array<{ offset: number; length: number }> {
  const ranges: Array<{ offset: number; length: number }> = [];
  const chunks = Math.ceil(sizeBytes / chunkBytes);
  if (ours.length !== chunks) throw new Error(`this site's hashes cover ${ours.length} chunks of ${chunkBytes} bytes, the disk ${chunks}`);
  for (let i = 0; i < chunks; i++) {
    const t = theirs[i];
    if (t?.equals(ours[i]!)) continue;
    const offset = i * chunkBytes;
    const length = Math.min(chunkBytes, sizeBytes - offset);
    const last = ranges.at(-1);
    if (last && last.offset + last.length === offset) last.length += length;
    else ranges.push({ offset, length });
  }
  return ranges;
}

function throwIfRejected(r: ReplicateResponse, seq: number, logger: Logger, vmId: string): void {
  const body = r.body;
  if (body?.$case === "cycleRejected" && Number(body.value.cycleSequence) === seq) {
    throw new Error(`the third site refused resync cycle ${seq} (${RejectReason[body.value.reason]}): ${body.value.message}`);
  }
  if (body?.$case === "chunkRejected") logger.warn({ vm: vmId, seq, message: body.value.message }, "chunk refused by the third site");
}
