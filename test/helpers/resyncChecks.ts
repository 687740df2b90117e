import { createHash } from "node:crypto";
import { createReadStream, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { getSqliteEventStore, relationshipStream, type RecordedEvent, type RecoveryPoint } from "../../src/ledger/index.js";
import { convertImage } from "../../src/qemu/processes/index.js";

/** SHA-256 of a point's full content per disk: its image read through its backing chain. */
export async function pointContentHashes(points: readonly RecoveryPoint[], scratchDir: string): Promise<Map<string, string>> {
  const hashes = new Map<string, string>();
  for (const p of points) {
    for (const d of p.disks) {
      const raw = join(scratchDir, `hash-${p.pointId}-${d.diskId}.raw`);
      await convertImage(d.imagePath, raw, { srcFormat: "qcow2", dstFormat: "raw" });
      const h = createHash("sha256");
      for await (const chunk of createReadStream(raw)) h.update(chunk as Buffer);
      rmSync(raw, { force: true });
      hashes.set(`${p.pointId}/${d.diskId}`, h.digest("hex"));
    }
  }
  return hashes;
}

/** The relationship's ledger events, read from the site's SQLite file. */
export async function ledgerEvents(siteDir: string, vmId = "vm1"): Promise<RecordedEvent[]> {
  const store = getSqliteEventStore({ path: join(siteDir, "ledger.sqlite"), create: false });
  try {
    return await store.readStream(relationshipStream(vmId));
  } finally {
    await store.close();
  }
}

/** Types from the first event of type `from` on, in order, keeping only the `types` listed. */
export function sequenceAfter(events: readonly RecordedEvent[], from: number, types: readonly string[]): string[] {
  return events
    .slice(from)
    .map((e) => e.type)
    .filter((t) => types.includes(t));
}

/** Bytes of the 64 KiB chunks whose content differs between two images (what a resync must send). */
export async function differingChunkBytes(a: { path: string; format: string }, b: { path: string; format: string }, scratchDir: string, chunkBytes = 64 * 1024): Promise<number> {
  const rawA = join(scratchDir, "diff-a.raw");
  const rawB = join(scratchDir, "diff-b.raw");
  await convertImage(a.path, rawA, { srcFormat: a.format, dstFormat: "raw" });
  await convertImage(b.path, rawB, { srcFormat: b.format, dstFormat: "raw" });
  try {
    const [x, y] = [readFileSync(rawA), readFileSync(rawB)];
    let differing = 0;
    for (let at = 0; at < Math.max(x.length, y.length); at += chunkBytes) {
      const ca = x.subarray(at, at + chunkBytes);
      const cb = y.subarray(at, at + chunkBytes);
      if (!ca.equals(cb)) differing += Math.max(ca.length, cb.length);
    }
    return differing;
  } finally {
    rmSync(rawA, { force: true });
    rmSync(rawB, { force: true });
  }
}

/** What the replica site logged for each resync it answered (src/site/dataPlane/resync.ts). */
export interface ResyncHashesSent {
  vm: string;
  seq: number;
  digest: string;
  hashedBytes: number;
  indexedBytes: number;
  unindexed: Record<string, string>;
}

export function resyncHashesSent(siteDir: string): ResyncHashesSent[] {
  return readFileSync(join(siteDir, "site.log"), "utf8")
    .split("\n")
    .filter((l) => l.includes('"resync: replica chunk hashes sent"'))
    .map((l) => JSON.parse(l) as ResyncHashesSent);
}
