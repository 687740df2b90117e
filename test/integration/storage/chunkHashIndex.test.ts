import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { chunkHashes, decodeChunkHashes, encodeChunkHashes, ReplicaStorage, SiteStorageDaemon, type PointWrite } from "../../../src/storage/index.js";
import { readChunkHashFile } from "../../../src/storage/chunkHashFile.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const KiB = 1024;
const CHUNK = 64 * KiB;
// Not a multiple of the chunk: the last chunk is short.
const SIZE = 2 * 1024 * KiB + 12 * KiB;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup() {
  const tmp = makeTmpDir();
  cleanups.push(tmp.cleanup);
  const daemon = await SiteStorageDaemon.start(join(tmp.path, "run"));
  cleanups.push(() => daemon.stop());
  const storage = new ReplicaStorage(join(tmp.path, "storage"), daemon);
  return { daemon, storage };
}

/** The truth: the committed image read through its chain and hashed. */
async function readHashes(daemon: SiteStorageDaemon, image: string): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const h of chunkHashes(daemon, image, CHUNK, "blake3")) out.push(h);
  return Buffer.concat(out);
}

function indexOf(storage: ReplicaStorage, seq: number): Buffer | string {
  const r = storage.loadChunkHashes("vm1", "vda", seq, SIZE);
  return "hashes" in r ? r.hashes : r.unusable;
}

/** The index file alone, once the background writes have landed. */
async function fileIndexOf(storage: ReplicaStorage, seq: number): Promise<Buffer | string> {
  await storage.indexes.settled();
  const r = readChunkHashFile(storage.chunkHashPath("vm1", "vda", seq), { sizeBytes: SIZE, chunkBytes: CHUNK, digest: "blake3" });
  return "hashes" in r ? r.hashes : r.unusable;
}

/**
 * Writes that cover chunks wholly, partly, twice, with zeroes, and the short last chunk. A cycle's
 * extents never overlap; where these do, the first has landed before the second is sent.
 */
async function scribble(point: PointWrite, seed: number): Promise<void> {
  const w = point.disk("vda")!;
  await new Promise<void>((landed) => void w.write(0, randomBytes(3 * CHUNK), landed));
  await w.write(CHUNK + 100, Buffer.alloc(50, seed)); // partly over a chunk written wholly before
  await w.write(4 * CHUNK + 512, randomBytes(CHUNK)); // two chunks, partly each
  await new Promise<void>((landed) => void w.write(8 * CHUNK, randomBytes(CHUNK), landed));
  await w.writeZeroes(8 * CHUNK, CHUNK); // zeroes over the chunk just written whole
  await w.writeZeroes(10 * CHUNK + 4 * KiB, 8 * KiB);
  await w.write(12 * CHUNK, Buffer.alloc(CHUNK)); // zero data written as data
  await w.write(20 * CHUNK, randomBytes(5 * CHUNK + 3000)); // big write ending mid-chunk
  await w.write(SIZE - 20 * KiB, randomBytes(20 * KiB)); // to the end: the short last chunk wholly, one partly
}

describe("chunk hash index: each point's chunk hashes, followed as it is written", () => {
  it("equals the hashes of the committed image read back, over full, incremental and resync points", async () => {
    const { daemon, storage } = await setup();
    // BLAKE3 where the native module loads (it does on these machines: a package dependency).
    expect(storage.indexDigest).toBe("blake3");
    const full = await storage.beginPoint("vm1", 1, [{ diskId: "vda", sizeBytes: SIZE, hashBase: { kind: "empty" } }]);
    await scribble(full, 1);
    const p1 = await full.commit();
    expect(p1.disks[0]!.chunkHashPath).toBe(storage.chunkHashPath("vm1", "vda", 1));
    const truth1 = await readHashes(daemon, p1.disks[0]!.imagePath);
    expect(indexOf(storage, 1)).toEqual(truth1);
    expect(await fileIndexOf(storage, 1)).toEqual(truth1);

    const inc = await storage.beginPoint("vm1", 2, [{ diskId: "vda", sizeBytes: SIZE, parentImage: p1.disks[0]!.imagePath, hashBase: { kind: "point", seq: 1 } }]);
    await scribble(inc, 2);
    await inc.disk("vda")!.write(30 * CHUNK, randomBytes(CHUNK));
    const p2 = await inc.commit();
    // As the site does right after the ledger commit, while the index may still be on its way in.
    storage.pruneChunkHashes("vm1", 2);
    const truth2 = await readHashes(daemon, p2.disks[0]!.imagePath);
    expect(truth2).not.toEqual(truth1);
    expect(indexOf(storage, 2)).toEqual(truth2);
    expect(await fileIndexOf(storage, 2)).toEqual(truth2);

    // A resync: chunks flow before the comparison hashes (the base) arrive.
    const resync = await storage.beginPoint("vm1", 3, [{ diskId: "vda", sizeBytes: SIZE, parentImage: p2.disks[0]!.imagePath, hashBase: { kind: "pending" } }]);
    await scribble(resync, 3);
    resync.setHashBase("vda", truth2);
    await resync.disk("vda")!.write(31 * CHUNK + 7, randomBytes(100));
    const p3 = await resync.commit();
    const truth3 = await readHashes(daemon, p3.disks[0]!.imagePath);
    expect(indexOf(storage, 3)).toEqual(truth3);
    expect(await fileIndexOf(storage, 3)).toEqual(truth3);

    storage.pruneChunkHashes("vm1", 3);
    expect(readdirSync(storage.diskDir("vm1", "vda")).filter((f) => f.endsWith(".chunks"))).toEqual(["rp-00000003.chunks"]);
  });

  it("no index when its base is unknown: a pending base that never came, a parent without one", async () => {
    const { storage } = await setup();
    const full = await storage.beginPoint("vm1", 1, [{ diskId: "vda", sizeBytes: SIZE, hashBase: { kind: "pending" } }]);
    await scribble(full, 1);
    full.setHashBase("vda", undefined);
    const p1 = await full.commit();
    expect(p1.disks[0]!.chunkHashPath).toBeUndefined();
    expect(existsSync(storage.chunkHashPath("vm1", "vda", 1))).toBe(false);

    const inc = await storage.beginPoint("vm1", 2, [{ diskId: "vda", sizeBytes: SIZE, parentImage: p1.disks[0]!.imagePath, hashBase: { kind: "point", seq: 1 } }]);
    await inc.disk("vda")!.write(0, randomBytes(CHUNK));
    expect((await inc.commit()).disks[0]!.chunkHashPath).toBeUndefined();
  });

  it("a damaged, truncated or stale index is refused, never trusted", async () => {
    const { storage } = await setup();
    const full = await storage.beginPoint("vm1", 1, [{ diskId: "vda", sizeBytes: SIZE, hashBase: { kind: "empty" } }]);
    await scribble(full, 1);
    const path = (await full.commit()).disks[0]!.chunkHashPath!;
    // From the file from here on, not from memory.
    await storage.indexes.settled();
    storage.indexes.forgetCached(path);
    const good = readFileSync(path);
    const damaged = Buffer.from(good);
    damaged[100] = damaged[100]! ^ 1;
    writeFileSync(path, damaged);
    expect(indexOf(storage, 1)).toMatch(/damaged/);
    truncateSync(path, good.length - 1);
    expect(indexOf(storage, 1)).toMatch(/bytes, expected/);
    writeFileSync(path, good);
    expect(storage.loadChunkHashes("vm1", "vda", 1, SIZE + CHUNK)).toEqual({ unusable: expect.stringMatching(/made for/) });
    const decoded = decodeChunkHashes(good, { sizeBytes: SIZE, chunkBytes: CHUNK, digest: "blake3" });
    if (!("hashes" in decoded)) throw new Error(decoded.unusable);
    writeFileSync(path, encodeChunkHashes({ ...decoded, digest: "sha256" }));
    expect(indexOf(storage, 1)).toMatch(/holds sha256 digests, not blake3/);
    writeFileSync(path, good);
    expect(indexOf(storage, 1)).toBeInstanceOf(Buffer);

    // A new point with the same sequence (a later chain) never inherits the old index.
    const again = await storage.beginPoint("vm1", 1, [{ diskId: "vda", sizeBytes: SIZE }]);
    expect(existsSync(path)).toBe(false);
    await again.discard();
  });

  it("the next point takes its parent's hashes from memory; a discarded point leaves the parent's file whole to start again from", async () => {
    const { daemon, storage } = await setup();
    const full = await storage.beginPoint("vm1", 1, [{ diskId: "vda", sizeBytes: SIZE, hashBase: { kind: "empty" } }]);
    await scribble(full, 1);
    const p1 = await full.commit();
    const truth1 = await readHashes(daemon, p1.disks[0]!.imagePath);
    const child = () => storage.beginPoint("vm1", 2, [{ diskId: "vda", sizeBytes: SIZE, parentImage: p1.disks[0]!.imagePath, hashBase: { kind: "point", seq: 1 } }]);
    // Taken from memory (once its file is whole), written over by the child, which is discarded.
    const first = await child();
    await scribble(first, 2);
    await first.discard();
    expect(indexOf(storage, 1)).toEqual(truth1); // from the file now: the child's writes never reached it
    // The second attempt starts from the file and ends with the right hashes.
    const second = await child();
    await scribble(second, 3);
    const p2 = await second.commit();
    const truth2 = await readHashes(daemon, p2.disks[0]!.imagePath);
    expect(indexOf(storage, 2)).toEqual(truth2);
    expect(await fileIndexOf(storage, 2)).toEqual(truth2);
    expect(await fileIndexOf(storage, 1)).toEqual(truth1);
  });
});
