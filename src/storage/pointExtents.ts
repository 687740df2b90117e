import { createHash } from "node:crypto";
import { BASE_ALLOCATION_CONTEXT, NBD_STATE_ZERO, NbdClient, readInPieces } from "../qemu/nbd/index.js";
import type { ExtentPiece } from "../transport/index.js";
import { addReadOnlyExport, removeReadOnlyExport } from "./readOnlyExport.js";
import type { SiteStorageDaemon } from "./siteStorageDaemon.js";

/** QEMU's NBD meta context: per extent, how deep in the backing chain it is allocated (1: the top). */
export const ALLOCATION_DEPTH_CONTEXT = "qemu:allocation-depth";

/** Zero ranges go as one message each, up to the wire's u32 length (aligned to 1 MiB). */
const MAX_ZERO_BYTES = 4096 * 1024 * 1024 - 1024 * 1024;

export interface PointExtentsOptions {
  /**
   * Only the clusters allocated in the top `depth` overlays of the point's chain: the changes of
   * those points (a cluster rewritten with its old bytes included, which is harmless). Absent: the
   * whole disk (zero runs as zero extents), for a full copy.
   */
  depth?: number;
  /** Only these ranges, in order (a resync's differing chunks); depth is then ignored. */
  ranges?: ReadonlyArray<{ offset: number; length: number }>;
  /** Largest data extent yielded (the receiver's max_chunk_bytes). */
  pieceBytes: number;
}

/**
 * A committed point's disk as extents, read through its backing chain from the site's storage
 * daemon (a read-only node with a shared lock, exported over NBD with allocation depth). The
 * caller keeps retention from rewriting the chain while this runs (ReplicaStorage.holdChains).
 * Data that reads as zeroes is sent as a zero extent.
 */
export async function* pointExtents(daemon: SiteStorageDaemon, imagePath: string, o: PointExtentsOptions): AsyncGenerator<ExtentPiece> {
  const node = `fwd${createHash("sha256").update(imagePath).digest("hex").slice(0, 20)}`;
  await addReadOnlyExport(daemon, node, imagePath, { allocationDepth: true });
  try {
    const client = await NbdClient.connect({ socketPath: daemon.nbdSocketPath, exportName: node, metaContexts: [BASE_ALLOCATION_CONTEXT, ALLOCATION_DEPTH_CONTEXT] });
    try {
      if (o.ranges) for (const r of o.ranges) yield* readPieces(client, r.offset, r.length, o.pieceBytes);
      else yield* o.depth === undefined ? wholeDisk(client, o.pieceBytes) : topLayers(client, o.depth, o.pieceBytes);
    } finally {
      await client.disconnect();
    }
  } finally {
    await removeReadOnlyExport(daemon, node);
  }
}

async function* wholeDisk(client: NbdClient, pieceBytes: number): AsyncGenerator<ExtentPiece> {
  for await (const e of client.extents(BASE_ALLOCATION_CONTEXT)) {
    if (e.flags & NBD_STATE_ZERO) yield* zeroPieces(e.offset, e.length);
    else yield* readPieces(client, e.offset, e.length, pieceBytes);
  }
}

async function* topLayers(client: NbdClient, depth: number, pieceBytes: number): AsyncGenerator<ExtentPiece> {
  for await (const e of client.extents(ALLOCATION_DEPTH_CONTEXT)) {
    if (e.flags >= 1 && e.flags <= depth) yield* readPieces(client, e.offset, e.length, pieceBytes);
  }
}

function* zeroPieces(offset: number, length: number): Generator<ExtentPiece> {
  for (let at = 0; at < length; at += MAX_ZERO_BYTES) yield { kind: "zero", offset: offset + at, length: Math.min(MAX_ZERO_BYTES, length - at) };
}

async function* readPieces(client: NbdClient, offset: number, length: number, pieceBytes: number): AsyncGenerator<ExtentPiece> {
  for (let at = 0; at < length; at += pieceBytes) {
    const n = Math.min(pieceBytes, length - at);
    // A fresh buffer per piece: the sender may still hold the previous one (compression, the wire).
    const data = await readInPieces(client, offset + at, n, Buffer.allocUnsafe(n));
    yield isZero(data) ? { kind: "zero", offset: offset + at, length: n } : { kind: "data", offset: offset + at, length: n, data };
  }
}

const ZEROES = Buffer.alloc(1024 * 1024);

function isZero(buf: Buffer): boolean {
  for (let at = 0; at < buf.length; at += ZEROES.length) {
    const part = buf.subarray(at, Math.min(at + ZEROES.length, buf.length));
    if (!part.equals(ZEROES.subarray(0, part.length))) return false;
  }
  return true;
}
