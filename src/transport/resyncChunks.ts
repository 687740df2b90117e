/**
 * The chunk size a resync compares a disk in. Both roles apply the same rule: the replica hashes
 * its side in it, and the sender reads and hashes from its cut-off on with it (HelloAck names the
 * digest) before the replica's first ResyncHashes confirm it.
 */

/** The bitmap's granularity: a resync then sends no more than a cycle would for the same writes. */
export const RESYNC_CHUNK_BYTES = 64 * 1024;
const MAX_HASHES_PER_DISK = 1 << 20;

/** 64 KiB chunks, or larger for huge disks so that the hash list stays under ~32 MiB. */
export function resyncChunkBytes(diskBytes: number): number {
  let chunk = RESYNC_CHUNK_BYTES;
  while (diskBytes / chunk > MAX_HASHES_PER_DISK) chunk *= 2;
  return chunk;
}
