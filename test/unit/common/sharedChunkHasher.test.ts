import { randomBytes } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { chunkDigest, type ChunkDigestName } from "../../../src/common/chunkDigest.js";
import { SharedChunkHasher } from "../../../src/common/sharedChunkHasher.js";

const CHUNK = 64 * 1024;
const open: SharedChunkHasher[] = [];
afterEach(async () => {
  for (const h of open.splice(0)) await h.close();
});

function hasher(digest: ChunkDigestName, slots = 4): SharedChunkHasher {
  const h = new SharedChunkHasher(slots, 4 * CHUNK, CHUNK, digest);
  open.push(h);
  return h;
}

const hex = (digests: Buffer) => Array.from({ length: digests.length / 32 }, (_, i) => digests.subarray(i * 32, i * 32 + 32).toString("hex"));

describe("SharedChunkHasher: chunk digests in a worker thread over shared memory", () => {
  it.each<ChunkDigestName>(["sha256", "blake3"])("gives each chunk's %s digest in place, zero chunks and a short last chunk included", async (digest) => {
    const h = hasher(digest);
    const slot = h.buffer(2);
    const bytes = randomBytes(4 * CHUNK);
    bytes.fill(0, CHUNK, 2 * CHUNK);
    bytes.copy(slot);
    const length = 3 * CHUNK + 1000;
    const { digests } = await h.hash(2, length);
    const expected = [0, 1, 2, 3].map((i) => chunkDigest(digest, bytes.subarray(i * CHUNK, Math.min((i + 1) * CHUNK, length))).toString("hex"));
    expect(hex(digests)).toEqual(expected);
    // The bytes stay where the read put them: nothing moved to the worker.
    expect(h.buffer(2).subarray(0, length).equals(bytes.subarray(0, length))).toBe(true);
  });

  it("keeps slots hashed at the same time apart", async () => {
    const h = hasher("blake3", 8);
    const inputs = Array.from({ length: 8 }, () => randomBytes(4 * CHUNK));
    for (const [i, b] of inputs.entries()) b.copy(h.buffer(i));
    const results = await Promise.all(inputs.map((_, i) => h.hash(i, 4 * CHUNK)));
    results.forEach(({ digests }, i) => {
      expect(hex(digests)).toEqual([0, 1, 2, 3].map((c) => chunkDigest("blake3", inputs[i]!.subarray(c * CHUNK, (c + 1) * CHUNK)).toString("hex")));
    });
  });

  it("rejects a slot that is not whole chunks, and pending hashes once closed", async () => {
    expect(() => new SharedChunkHasher(1, CHUNK + 1, CHUNK, "sha256")).toThrow(/whole number/);
    const h = new SharedChunkHasher(2, 4 * CHUNK, CHUNK, "sha256");
    const pending = expect(h.hash(0, 4 * CHUNK)).rejects.toThrow(/closed/);
    await h.close();
    await pending;
    await expect(h.hash(1, CHUNK)).rejects.toThrow(/stopped|closed/);
  });
});
