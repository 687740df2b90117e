import { createHash } from "node:crypto";
import { createReadStream, rmSync } from "node:fs";
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
  return events.slice(from).map((e) => e.type).filter((t) => types.includes(t));
}
