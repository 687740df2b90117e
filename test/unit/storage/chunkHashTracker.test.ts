import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { chunkDigest, type ChunkDigestName } from "../../../src/common/chunkDigest.js";
import { ChunkHashTracker } from "../../../src/storage/chunkHashTracker.js";

const CHUNK = 64 * 1024;
// Not a multiple of the chunk: the last chunk is short.
const SIZE = 20 * CHUNK + 5000;

function digests(name: ChunkDigestName, disk: Buffer): Buffer {
  const out: Buffer[] = [];
  for (let at = 0; at < disk.length; at += CHUNK) out.push(chunkDigest(name, disk.subarray(at, Math.min(at + CHUNK, disk.length))));
  return Buffer.concat(out);
}

/**
 * The tracker against a model disk (a Buffer): every write is applied to the model and noted, and
 * the tracker's result must equal the digests of the model. The "image" the tracker re-reads
 * partly written chunks from is the model itself.
 */
describe.each<ChunkDigestName>(["sha256", "blake3"])("ChunkHashTracker (%s)", (digest) => {
  async function scribble(tracker: ChunkHashTracker, disk: Buffer): Promise<void> {
    const data = async (offset: number, bytes: Buffer) => {
      bytes.copy(disk, offset);
      await tracker.noteData(offset, bytes);
      // The caller may reuse its buffer once noteData resolves: the tracker must have its own copy.
      bytes.fill(0xee);
    };
    const zeroes = (offset: number, length: number) => {
      disk.fill(0, offset, offset + length);
      tracker.noteZeroes(offset, length);
    };
    await data(0, randomBytes(5 * CHUNK)); // whole chunks
    await data(CHUNK + 10, randomBytes(100)); // partly over a whole one
    zeroes(2 * CHUNK, CHUNK); // zeroes over a whole one, while its hash may still be computed
    await data(3 * CHUNK - 7, randomBytes(2 * CHUNK)); // unaligned, spanning three
    zeroes(7 * CHUNK + 100, 3 * CHUNK); // unaligned zeroes
    await data(12 * CHUNK, randomBytes(6 * CHUNK)); // several whole chunks in one write
    await data(12 * CHUNK, randomBytes(CHUNK)); // the same chunk again, whole
    await data(SIZE - 5000, randomBytes(5000)); // the short last chunk, whole
    await data(SIZE - 70_000, randomBytes(1000)); // partly, the chunk before it
  }

  it("over an empty image: equals the digests of what was written", async () => {
    const disk = Buffer.alloc(SIZE);
    const tracker = new ChunkHashTracker(SIZE, CHUNK, digest, { kind: "empty" });
    await scribble(tracker, disk);
    const hashes = await tracker.finish(async (offset, length) => Buffer.from(disk.subarray(offset, offset + length)));
    expect(hashes).toEqual(digests(digest, disk));
  });

  it("over a known base, and over a base that arrives after the first writes", async () => {
    const parent = randomBytes(SIZE);
    const disk = Buffer.from(parent);
    const known = new ChunkHashTracker(SIZE, CHUNK, digest, { kind: "known", hashes: digests(digest, parent) });
    await scribble(known, disk);
    expect(await known.finish(async (o, l) => Buffer.from(disk.subarray(o, o + l)))).toEqual(digests(digest, disk));

    const later = Buffer.from(parent);
    const pending = new ChunkHashTracker(SIZE, CHUNK, digest, { kind: "pending" });
    await scribble(pending, later);
    pending.setBase(digests(digest, parent));
    expect(await pending.finish(async (o, l) => Buffer.from(later.subarray(o, o + l)))).toEqual(digests(digest, later));
  });

  it("no result without a base, or with a base of the wrong length", async () => {
    const never = new ChunkHashTracker(SIZE, CHUNK, digest, { kind: "pending" });
    await never.noteData(0, randomBytes(CHUNK));
    expect(await never.finish(async () => Buffer.alloc(0))).toBeUndefined();
    expect(never.reason).toMatch(/not known/);
    const wrong = new ChunkHashTracker(SIZE, CHUNK, digest, { kind: "pending" });
    wrong.setBase(Buffer.alloc(32));
    expect(await wrong.finish(async () => Buffer.alloc(0))).toBeUndefined();
  });
});
