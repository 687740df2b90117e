import { errorMessage } from "../../common/errors.js";
import { BufferPool } from "../../common/bufferPool.js";
import { YOUNG_GC_EVERY_BYTES, YoungGc } from "../../common/youngGc.js";
import type { ChecksumAlgorithm } from "../../gen/qreplica/v1/common.js";
import { RejectReason, type ExtentChunk } from "../../gen/qreplica/v1/replication.js";
import type { PointWrite } from "../../storage/index.js";
import { decodeExtentChunk } from "../../transport/index.js";
import { INCOMPRESSIBLE_RATIO, type PointGroup } from "../../ledger/index.js";

export const MAX_CHUNK_BYTES = 4 * 1024 * 1024;

/**
 * One for the process: the dead buffers of every stream's chunks add up in one heap. Twice as
 * often as the agent's: the site holds more while a cycle runs (writes in flight, the chunk hash
 * index), and its CPU is not the production host's.
 */
const youngGc = new YoungGc(YOUNG_GC_EVERY_BYTES / 2);

/** Why a chunk was refused, as the wire says it. */
export interface ChunkRefusal {
  reason: RejectReason;
  message: string;
}

/**
 * A cycle between CycleBegin and CycleEnd: its partial point, the totals CycleEnd is checked
 * against, and the chunks' way from the wire to the point's images.
 */
export class OpenCycle {
  readonly startedAt = Date.now();
  extents = 0;
  dataBytes = 0;
  zeroBytes = 0;
  /** dataBytes by disk id. */
  readonly diskDataBytes = new Map<string, number>();
  /** By disk id: data bytes in chunks that did not compress, and wire bytes (the encryption signal). */
  readonly diskCompression = new Map<string, { incompressibleBytes: number; wireBytes: number }>();
  wireBytes = 0;
  /** Decompression targets, reused once the storage daemon has the bytes; dropped with the cycle. */
  private readonly buffers = new BufferPool();
  /** For progress: where each disk starts when the cycle's disks are laid end to end, and how far a resync has got. */
  private diskStarts = new Map<string, number>();
  private position = 0;
  /** What the cycle covers in all (0: unknown); see progress(). */
  private plannedBytes = 0;

  constructor(
    readonly seq: number,
    readonly kind: "full" | "incremental" | "resync",
    readonly cutoffAt: Date,
    readonly consistency: "application" | "crash",
    readonly point: PointWrite,
    /** The primary wanted the guest frozen for this cut-off and could not: why. */
    readonly quiesceFailure?: string,
    /** The consistency group cut-off the primary cut this cycle in. */
    readonly group?: PointGroup,
  ) {}

  /**
   * Sets what progress() measures against: the agent's planned bytes, and for a resync (which
   * ships only differing chunks, in disk order) the disks laid end to end.
   */
  plan(disks: ReadonlyArray<{ diskId: string; sizeBytes: number }>, plannedBytes: number): void {
    let at = 0;
    for (const d of disks) {
      this.diskStarts.set(d.diskId, at);
      at += d.sizeBytes;
    }
    this.plannedBytes = this.kind === "resync" ? at : plannedBytes;
  }

  /** How far the cycle has got, for GetStatus: bytes covered so far and in all (0: unknown). */
  progress(): { bytesDone: number; bytesTotal: number; wireBytes: number } {
    const received = this.kind === "resync" ? this.position : this.dataBytes + this.zeroBytes;
    const bytesDone = this.plannedBytes > 0 ? Math.min(received, this.plannedBytes) : received;
    return { bytesDone, bytesTotal: this.plannedBytes, wireBytes: this.wireBytes };
  }

  /**
   * Verifies `chunk` and queues its write into the point (generation and sequence were checked by
   * the caller). Resolves once the write is queued, or with why the chunk is refused.
   */
  async apply(chunk: ExtentChunk, acceptedChecksums: readonly ChecksumAlgorithm[]): Promise<ChunkRefusal | undefined> {
    const writer = this.point.disk(chunk.diskId);
    if (!writer) return { reason: RejectReason.REJECT_REASON_UNKNOWN_DISK, message: `disk '${chunk.diskId}' was not announced in CycleBegin` };
    let decoded;
    // Taken before the chunk is checked, so only for lengths the check will accept.
    const target = chunk.payload?.$case === "data" && chunk.length > 0 && chunk.length <= MAX_CHUNK_BYTES ? this.buffers.take(chunk.length) : undefined;
    try {
      decoded = decodeExtentChunk(chunk, { maxChunkBytes: MAX_CHUNK_BYTES, into: target, acceptedChecksums });
    } catch (err) {
      const code = (err as { code?: string }).code ?? "INTERNAL";
      const reason = (RejectReason as unknown as Record<string, number>)[`REJECT_REASON_${code}`] ?? RejectReason.REJECT_REASON_INTERNAL;
      return { reason, message: errorMessage(err) };
    }
    try {
      if (decoded.kind === "data") {
        const inTarget = target !== undefined && decoded.data.buffer === target.buffer;
        if (target && !inTarget) this.buffers.give(target);
        await writer.write(decoded.offset, decoded.data, inTarget ? () => this.buffers.give(target) : undefined);
      } else {
        await writer.writeZeroes(decoded.offset, decoded.length);
      }
    } catch (err) {
      const reason = (err as { code?: string }).code === "EXTENT_OUT_OF_RANGE" ? RejectReason.REJECT_REASON_OUT_OF_RANGE : RejectReason.REJECT_REASON_STORAGE_FAILURE;
      return { reason, message: errorMessage(err) };
    }
    this.extents++;
    this.position = Math.max(this.position, (this.diskStarts.get(chunk.diskId) ?? 0) + decoded.offset + decoded.length);
    if (decoded.kind === "data") {
      this.dataBytes += decoded.length;
      this.diskDataBytes.set(chunk.diskId, (this.diskDataBytes.get(chunk.diskId) ?? 0) + decoded.length);
      this.wireBytes += decoded.wireBytes;
      youngGc.note(decoded.wireBytes);
      const c = this.diskCompression.get(chunk.diskId) ?? { incompressibleBytes: 0, wireBytes: 0 };
      // Sent raw (zstd would have grown it) or barely smaller: random-looking data, as encrypted data is.
      if (decoded.wireBytes >= decoded.length * INCOMPRESSIBLE_RATIO) c.incompressibleBytes += decoded.length;
      c.wireBytes += decoded.wireBytes;
      this.diskCompression.set(chunk.diskId, c);
    } else {
      this.zeroBytes += decoded.length;
    }
    return undefined;
  }
}
