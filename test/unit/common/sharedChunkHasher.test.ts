import { randomBytes } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { chunkDigest, type ChunkDigestName } from "../../../src/common/chunkDigest.js";
import { SharedChunkHasher } from "../../../src/common/sharedChunkHasher.js";

const CHUNK = 64 * 1024;
const open: SharedChunkHasher[] = [];
afterEach(async () => {
  for (const h of open.splice(0)) await h.close();
});

function hasher(slots = 4): SharedChunkHasher {
  const h = new SharedChunkHasher(slots, 4 * CHUNK);
  open.push(h);
  return h;
}

const hex = (digests: Buffer) => Array.from({ length: digests.length / 32 }, (_, i) => digests.subarray(i * 32, i * 32 + 32).toString("hex"));

describe("SharedChunkHasher: chunk digests in a worker thread over shared memory", () => {
  it.each<ChunkDigestName>(["sha256", "blake3"])("gives each chunk's %s digest in place, zero chunks and a short last chunk included", async (digest) => {
    const h = hasher();
    const slot = h.buffer(2);
    const bytes = randomBytes(4 * CHUNK);
    bytes.fill(0, CHUNK, 2 * CHUNK);
    bytes.copy(slot);
    const length = 3 * CHUNK + 1000;
    const { digests } = await h.hash(2, length, { chunkBytes: CHUNK, digest });
    const expected = [0, 1, 2, 3].map((i) => chunkDigest(digest, bytes.subarray(i * CHUNK, Math.min((i + 1) * CHUNK, length))).toString("hex"));
    expect(hex(digests)).toEqual(expected);
    // The bytes stay where the read put them: nothing moved to the worker.
    expect(h.buffer(2).subarray(0, length).equals(bytes.subarray(0, length))).toBe(true);
  });

  it("keeps slots hashed at the same time apart", async () => {
    const h = hasher(8);
    const inputs = Array.from({ length: 8 }, () => randomBytes(4 * CHUNK));
    for (const [i, b] of inputs.entries()) b.copy(h.buffer(i));
    const results = await Promise.all(inputs.map((_, i) => h.hash(i, 4 * CHUNK, { chunkBytes: CHUNK, digest: "blake3" })));
    results.forEach(({ digests }, i) => {
      expect(hex(digests)).toEqual([0, 1, 2, 3].map((c) => chunkDigest("blake3", inputs[i]!.subarray(c * CHUNK, (c + 1) * CHUNK)).toString("hex")));
    });
  });

  it("digests one slot in another chunk size and digest than the last: the scheme comes with each request", async () => {
    const h = hasher();
    const bytes = randomBytes(4 * CHUNK);
    bytes.copy(h.buffer(0));
    const small = await h.hash(0, 4 * CHUNK, { chunkBytes: CHUNK / 4, digest: "sha256" });
    expect(hex(small.digests)).toEqual(Array.from({ length: 16 }, (_, i) => chunkDigest("sha256", bytes.subarray((i * CHUNK) / 4, ((i + 1) * CHUNK) / 4)).toString("hex")));
    const large = await h.hash(0, 4 * CHUNK, { chunkBytes: 2 * CHUNK, digest: "blake3" });
    expect(hex(large.digests)).toEqual([0, 1].map((i) => chunkDigest("blake3", bytes.subarray(i * 2 * CHUNK, (i + 1) * 2 * CHUNK)).toString("hex")));
  });

  it("rejects a slot that is not whole 4 KiB blocks, a chunk below 4 KiB, a length past the slot, and pending hashes once closed", async () => {
    expect(() => new SharedChunkHasher(1, CHUNK + 1)).toThrow(/whole number/);
    const h = new SharedChunkHasher(2, 4 * CHUNK);
    await expect(h.hash(0, CHUNK, { chunkBytes: 512, digest: "sha256" })).rejects.toThrow(/at least 4096/);
    await expect(h.hash(0, 5 * CHUNK, { chunkBytes: CHUNK, digest: "sha256" })).rejects.toThrow(/do not fit/);
    const pending = expect(h.hash(0, 4 * CHUNK, { chunkBytes: CHUNK, digest: "sha256" })).rejects.toThrow(/closed/);
    await h.close();
    await pending;
    await expect(h.hash(1, CHUNK, { chunkBytes: CHUNK, digest: "sha256" })).rejects.toThrow(/stopped|closed/);
  });
});
