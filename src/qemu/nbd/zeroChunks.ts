import type { NbdClient } from "./client.js";
import { NBD_STATE_ZERO } from "./constants.js";

export const BASE_ALLOCATION_CONTEXT = "base:allocation";

/**
 * Which fixed-size chunks of the export the server says read as zeroes (base:allocation's
 * NBD_STATE_ZERO, which QEMU sets only when it knows), so that a resync by comparison neither
 * reads nor hashes them: their digest is a constant (zeroChunkDigest). Chunk i covers
 * [i*chunkBytes, min((i+1)*chunkBytes, size)); it is marked only when wholly inside a run of zero
 * extents. Undefined when the connection did not negotiate base:allocation (then read everything).
 */
export async function knownZeroChunks(client: NbdClient, chunkBytes: number): Promise<Uint8Array | undefined> {
  if (!client.metaContextIds.has(BASE_ALLOCATION_CONTEXT)) return undefined;
  const size = client.size;
  const zero = new Uint8Array(Math.ceil(size / chunkBytes));
  const mark = (start: number, end: number) => {
    const first = Math.ceil(start / chunkBytes);
    for (let i = first; i < zero.length && Math.min((i + 1) * chunkBytes, size) <= end; i++) zero[i] = 1;
  };
  // Adjacent zero extents may differ in other flags (hole or not): a run spans them.
  let runStart = -1;
  let runEnd = -1;
  for await (const e of client.extents(BASE_ALLOCATION_CONTEXT)) {
    if ((e.flags & NBD_STATE_ZERO) === 0) continue;
    if (e.offset !== runEnd) {
      if (runStart >= 0) mark(runStart, runEnd);
      runStart = e.offset;
    }
    runEnd = e.offset + e.length;
  }
  if (runStart >= 0) mark(runStart, runEnd);
  return zero;
}

/**
 * Whether [offset, offset+length) lies wholly in chunks `knownZero` (from knownZeroChunks) marks
 * as reading zeroes; always false without it (then everything is read).
 */
export function knownZeroRanges(knownZero: Uint8Array | undefined, chunkBytes: number): (offset: number, length: number) => boolean {
  return (offset, length) => {
    if (!knownZero) return false;
    for (let i = Math.floor(offset / chunkBytes); i * chunkBytes < offset + length; i++) if (knownZero[i] !== 1) return false;
    return true;
  };
}
