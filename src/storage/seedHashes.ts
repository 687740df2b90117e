import { createHash } from "node:crypto";
import { chunkDigest, zeroChunkDigest, type ChunkDigestName } from "../common/chunkDigest.js";
import { BASE_ALLOCATION_CONTEXT, knownZeroChunks, knownZeroRanges, NbdClient, readInPieces } from "../qemu/nbd/index.js";
import { RESYNC_CHUNK_BYTES } from "../transport/resyncChunks.js";
import { addReadOnlyExport, removeReadOnlyExport } from "./readOnlyExport.js";
import type { SiteStorageDaemon } from "./siteStorageDaemon.js";

/** A unit of reading and hashing covers this many chunks. */
const CHUNKS_PER_READ = 16;
const READS_IN_FLIGHT = 8;

/**
 * The digest of every fixed-size chunk of an image read through its backing chain (so a point's top
 * overlay gives the point's full content), through the site's storage daemon (read-only, shared
 * lock), for resynchronisation by comparison. Chunks the chain reports as zeroes (base:allocation)
 * are not read: their hash is a constant.
 */
export async function* chunkHashes(daemon: SiteStorageDaemon, imagePath: string, chunkBytes = RESYNC_CHUNK_BYTES, digest: ChunkDigestName = "sha256"): AsyncGenerator<Buffer> {
  const node = `seed${createHash("sha256").update(imagePath).digest("hex").slice(0, 20)}`;
  await addReadOnlyExport(daemon, node, imagePath);
  try {
    const client = await NbdClient.connect({ socketPath: daemon.nbdSocketPath, exportName: node, metaContexts: [BASE_ALLOCATION_CONTEXT] });
    try {
      const readBytes = chunkBytes * CHUNKS_PER_READ;
      // Runs the chain reports as reading zeroes are neither read nor hashed: their hash is a constant.
      const unitIsZero = knownZeroRanges(await knownZeroChunks(client, chunkBytes), chunkBytes);
      // read undefined: a unit known to read as zeroes, not read.
      const queue: Array<{ offset: number; length: number; read?: Promise<Buffer>; into?: Buffer }> = [];
      // Read buffers go round: fresh 1 MiB allocations per read cost more in GC than the hashing.
      const free: Buffer[] = [];
      let next = 0;
      let reading = 0;
      const issue = () => {
        const offset = next;
        const length = Math.min(readBytes, client.size - offset);
        next += length;
        if (unitIsZero(offset, length)) {
          queue.push({ offset, length });
          return;
        }
        const into = free.pop() ?? Buffer.allocUnsafeSlow(readBytes);
        const read = readInPieces(client, offset, length, into);
        read.catch(() => undefined);
        reading++;
        queue.push({ offset, length, read, into });
      };
      const fill = () => {
        while (next < client.size && reading < READS_IN_FLIGHT) issue();
      };
      fill();
      while (queue.length > 0) {
        const { length, read, into } = queue.shift()!;
        const hashes: Buffer[] = [];
        if (read === undefined) {
          for (let at = 0; at < length; at += chunkBytes) hashes.push(zeroChunkDigest(digest, Math.min(chunkBytes, length - at)));
        } else {
          const buf = await read;
          for (let at = 0; at < buf.length; at += chunkBytes) hashes.push(chunkDigest(digest, buf.subarray(at, Math.min(at + chunkBytes, buf.length))));
          free.push(into!);
          reading--;
        }
        fill();
        yield* hashes;
      }
    } finally {
      await client.disconnect();
    }
  } finally {
    await removeReadOnlyExport(daemon, node);
  }
}
