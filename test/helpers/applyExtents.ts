import { open } from "node:fs/promises";
import type { CaptureExtent } from "../../replica-agent/capture/index.js";

/**
 * Test oracle for the capture layer: applies a cycle's extents to a raw file, as the replica
 * would to its overlay. Returns the bytes of data and zeroes applied.
 */
export async function applyExtentsToRaw(rawPath: string, sizeBytes: number, extents: AsyncIterable<CaptureExtent>): Promise<{ data: number; zero: number; extents: number }> {
  const fh = await open(rawPath, "a+").then(async (h) => {
    await h.close();
    return open(rawPath, "r+");
  });
  const totals = { data: 0, zero: 0, extents: 0 };
  try {
    // A new file reads as zeroes already: zero ranges need no writes (extents of a cycle never overlap).
    const fresh = (await fh.stat()).size === 0;
    await fh.truncate(sizeBytes);
    const zeroes = Buffer.alloc(4 * 1024 * 1024);
    for await (const e of extents) {
      totals.extents++;
      if (e.offset + e.length > sizeBytes) throw new Error(`extent ${e.offset}+${e.length} beyond disk size ${sizeBytes}`);
      if (e.kind === "data") {
        if (e.data.length !== e.length) throw new Error(`extent at ${e.offset}: length ${e.length} but ${e.data.length} bytes`);
        await fh.write(e.data, 0, e.length, e.offset);
        totals.data += e.length;
      } else if (!fresh) {
        for (let at = 0; at < e.length; at += zeroes.length) {
          const n = Math.min(zeroes.length, e.length - at);
          await fh.write(zeroes, 0, n, e.offset + at);
        }
      }
      if (e.kind === "zero") totals.zero += e.length;
    }
  } finally {
    await fh.close();
  }
  return totals;
}
