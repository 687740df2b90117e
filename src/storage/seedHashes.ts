import { createHash } from "node:crypto";
import { NbdClient } from "../qemu/nbd/index.js";
import type { SiteStorageDaemon } from "./siteStorageDaemon.js";

/** The bitmap's granularity: a resync then sends no more than a cycle would for the same writes. */
export const RESYNC_CHUNK_BYTES = 64 * 1024;
const MAX_HASHES_PER_DISK = 1 << 20;

/** 64 KiB chunks, or larger for huge disks so that the hash list stays under ~32 MiB. */
export function resyncChunkBytes(diskBytes: number): number {
  let chunk = RESYNC_CHUNK_BYTES;
  while (diskBytes / chunk > MAX_HASHES_PER_DISK) chunk *= 2;
  return chunk;
}

/**
 * SHA-256 of every fixed-size chunk of an image, read through the site's storage daemon
 * (read-only, shared lock), for resynchronisation by comparison.
 */
export async function* chunkHashes(daemon: SiteStorageDaemon, imagePath: string, chunkBytes = RESYNC_CHUNK_BYTES): AsyncGenerator<Buffer> {
  const node = `seed${createHash("sha256").update(imagePath).digest("hex").slice(0, 20)}`;
  await daemon.qmp.execute("blockdev-add", { driver: "qcow2", "node-name": node, "read-only": true, file: { driver: "file", filename: imagePath, "read-only": true } });
  try {
    await daemon.qmp.execute("block-export-add", { type: "nbd", id: node, "node-name": node, name: node, writable: false });
    const client = await NbdClient.connect({ socketPath: daemon.nbdSocketPath, exportName: node });
    try {
      const inFlight: Array<Promise<Buffer>> = [];
      let next = 0;
      const issue = () => {
        const offset = next;
        next += chunkBytes;
        inFlight.push(client.read(offset, Math.min(chunkBytes, client.size - offset)).then((b) => createHash("sha256").update(b).digest()));
      };
      while (next < client.size && inFlight.length < 32) issue();
      while (inFlight.length > 0) {
        const hash = await inFlight.shift()!;
        if (next < client.size) issue();
        yield hash;
      }
    } finally {
      await client.disconnect();
    }
  } finally {
    const gone = daemon.qmp.waitForEvent("BLOCK_EXPORT_DELETED", (d) => d.id === node, 10_000).catch(() => undefined);
    await daemon.qmp.execute("block-export-del", { id: node, mode: "hard" }).catch(() => undefined);
    await gone;
    await daemon.qmp.execute("blockdev-del", { "node-name": node }).catch(() => undefined);
  }
}
