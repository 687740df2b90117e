import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DiskCycle } from "../../../replica-agent/capture/captureCycle.js";
import type { CaptureExtent } from "../../../replica-agent/capture/index.js";
import { ComparisonHashes } from "../../../replica-agent/daemon/comparisonHashes.js";
import { differingChunks, startResyncHasher, type ResyncStats } from "../../../replica-agent/daemon/differingChunks.js";
import { convertImage, runTool } from "../../../src/qemu/processes/index.js";
import { BASE_ALLOCATION_CONTEXT, NbdClient } from "../../../src/qemu/nbd/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";
import { startQsd } from "../nbd/qsd.js";
import { chunkDigest, type ChunkDigestName } from "../../../src/common/chunkDigest.js";
import { digestToWire } from "../../../src/transport/index.js";

const KiB = 1024;
const CHUNK = 64 * KiB;
// 130 chunks and a short one: three 64-chunk (4 MiB) read units of 8-chunk (512 KiB) pieces, the
// second wholly zero.
const SIZE = 130 * CHUNK + 8 * KiB;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A qcow2 primary of random data with zeroes over chunks [zeroFrom, zeroTo) (sparse, as qemu-img convert leaves them). */
async function randomPrimary(size: number, zeroFrom: number, zeroTo: number): Promise<{ dir: string; img: string; primary: Buffer }> {
  const tmp = makeTmpDir();
  cleanups.push(tmp.cleanup);
  const primary = randomBytes(size);
  primary.fill(0, zeroFrom * CHUNK, zeroTo * CHUNK);
  const raw = join(tmp.path, "primary.raw");
  writeFileSync(raw, primary);
  const img = join(tmp.path, "primary.qcow2");
  await runTool("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", raw, img]);
  return { dir: tmp.path, img, primary };
}

/** A read-only NBD export of `img` (base:allocation negotiated), as the agent reads a cut-off. */
async function exportOf(dir: string, img: string): Promise<NbdClient> {
  const qsd = await startQsd({ dir, image: img, exports: [{ id: "e", name: "e", writable: false }], readOnlyImage: true });
  cleanups.push(() => qsd.stop());
  const client = await NbdClient.connect({ socketPath: qsd.nbdSocket, exportName: "e", metaContexts: [BASE_ALLOCATION_CONTEXT] });
  cleanups.push(() => client.disconnect());
  return client;
}

/** Applies what the resync yields to `replica`; returns the chunk indexes yielded, in order. */
async function applyResync(extents: AsyncIterable<CaptureExtent>, replica: Buffer): Promise<number[]> {
  const yielded: number[] = [];
  for await (const e of extents) {
    yielded.push(e.offset / CHUNK);
    if (e.kind === "data") e.data.copy(replica, e.offset);
    else replica.fill(0, e.offset, e.offset + e.length);
  }
  return yielded;
}

/** The replica's hashes come (`feed`) once the reader, its first 4 MiB unit hashed without them, looks at the second unit's. */
function hashesAfterFirstUnit(hashes: ComparisonHashes, feed: () => void): void {
  let fed = false;
  hashes.known = (diskId, index) => {
    if (!fed && index >= 64) {
      fed = true;
      feed();
    }
    return ComparisonHashes.prototype.known.call(hashes, diskId, index);
  };
}

describe("differingChunks: the agent's side of a resync by comparison", () => {
  it.each<ChunkDigestName>(["sha256", "blake3"])("applying what it yields to the replica's bytes gives the primary's, zero runs unread (%s)", async (digest) => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const img = join(tmp.path, "primary.qcow2");
    await runTool("qemu-img", ["create", "-q", "-f", "qcow2", img, String(SIZE)]);
    // Data in chunks 0-2 and 14; written zeroes over 64-127; the rest (3-13, 15-63, 128-129) a hole; data in the short last chunk.
    await runTool("qemu-io", [
      "-f",
      "qcow2",
      img,
      ...[`write -P 0x61 0 ${3 * CHUNK}`, `write -z ${64 * CHUNK} ${64 * CHUNK}`, `write -P 0x62 ${14 * CHUNK} ${CHUNK}`, `write -P 0x63 ${130 * CHUNK} ${8 * KiB}`].flatMap(
        (c) => ["-c", c],
      ),
    ]);
    await convertImage(img, join(tmp.path, "primary.raw"), { dstFormat: "raw" });
    const primary = readFileSync(join(tmp.path, "primary.raw"));

    // The replica: equal in chunk 0, data where the primary has zeroes (5, 40, 70, 129), zeroes where it has data (1), equal elsewhere.
    const replica = Buffer.from(primary);
    for (const i of [5, 40, 70, 129]) randomBytes(CHUNK).copy(replica, i * CHUNK);
    replica.fill(0, CHUNK, 2 * CHUNK);
    const hashes = new ComparisonHashes();
    const all: Buffer[] = [];
    for (let at = 0; at < SIZE; at += CHUNK) all.push(chunkDigest(digest, replica.subarray(at, Math.min(at + CHUNK, SIZE))));
    hashes.add({ generation: 1n, cycleSequence: 1n, diskId: "vda", chunkBytes: CHUNK, firstChunk: 0n, hashes: all, last: true, digest: digestToWire(digest) });

    const qsd = await startQsd({ dir: tmp.path, image: img, exports: [{ id: "e", name: "e", writable: false }], readOnlyImage: true });
    cleanups.push(() => qsd.stop());
    const client = await NbdClient.connect({ socketPath: qsd.nbdSocket, exportName: "e", metaContexts: [BASE_ALLOCATION_CONTEXT] });
    cleanups.push(() => client.disconnect());
    const disk = new DiskCycle("vda", "node", SIZE, SIZE, [client], async function* () {}, {});
    const stats: ResyncStats = { comparedBytes: 0, differingBytes: 0 };
    const yielded: number[] = [];
    for await (const e of differingChunks(disk, hashes, stats)) {
      yielded.push(e.offset / CHUNK);
      if (e.kind === "data") e.data.copy(replica, e.offset);
      else replica.fill(0, e.offset, e.offset + e.length);
    }
    expect(replica.equals(primary)).toBe(true);
    expect(yielded).toEqual([1, 5, 40, 70, 129]);
    // 64-127 is a known-zero unit, neither read nor hashed (70 still yielded, as zeroes); in the
    // first unit the pieces 16-63 are known zero and not read (40 yielded too); the pieces holding
    // data (0-7, 8-15, 128-130) are read, holes included.
    expect(stats.knownZeroBytes).toBe(64 * CHUNK + 48 * CHUNK);
    expect(stats.comparedBytes).toBe(SIZE);
  });

  it("with the replica's hashes arriving while it reads, it yields exactly the differing chunks, in disk order; the cycle's hashing thread serves disk after disk", async () => {
    // 100 chunks and a short one: two read units.
    const size = 100 * CHUNK + 8 * KiB;
    const { dir, img, primary } = await randomPrimary(size, 40, 50);
    const replica = Buffer.from(primary);
    const differ = [0, 3, 17, 31, 32, 45, 63, 64, 79, 99, 100];
    // Started before any hash arrived, as a resync cycle starts it at its cut-off.
    const hasher = startResyncHasher();
    cleanups.push(() => hasher.close());
    for (const i of differ) randomBytes(Math.min(CHUNK, size - i * CHUNK)).copy(replica, i * CHUNK);
    const all: Buffer[] = [];
    for (let at = 0; at < size; at += CHUNK) all.push(chunkDigest("blake3", replica.subarray(at, Math.min(at + CHUNK, size))));
    const hashes = new ComparisonHashes();
    const batch = (from: number, to: number, diskId = "vda") => ({
      generation: 1n,
      cycleSequence: 1n,
      diskId,
      chunkBytes: CHUNK,
      firstChunk: BigInt(from),
      hashes: all.slice(from, to),
      last: to >= all.length,
      digest: digestToWire("blake3"),
    });
    // The first hashes before the read, the rest once it yields: the read then usually reaches
    // chunks whose hashes are still on their way (the awaited path); either way the result is the same.
    hashes.add(batch(0, 20));
    const later = [() => hashes.add(batch(20, 70)), () => hashes.add(batch(70, all.length))];
    const client = await exportOf(dir, img);
    const disk = new DiskCycle("vda", "node", size, size, [client], async function* () {}, {});
    const stats: ResyncStats = { comparedBytes: 0, differingBytes: 0 };
    const replicaBefore = Buffer.from(replica);
    const yielded: number[] = [];
    for await (const e of differingChunks(disk, hashes, stats, hasher)) {
      yielded.push(e.offset / CHUNK);
      if (e.kind === "data") e.data.copy(replica, e.offset);
      else replica.fill(0, e.offset, e.offset + e.length);
      const feed = later.shift();
      if (feed) setTimeout(feed, 20);
    }
    expect(replica.equals(primary)).toBe(true);
    expect(yielded).toEqual(differ);
    expect(stats.comparedBytes).toBe(size);
    expect(stats.differingBytes).toBe(10 * CHUNK + 8 * KiB);

    // A second disk of the same cycle (the same export under another id) reuses the thread and its slots.
    hashes.add(batch(0, all.length, "vdb"));
    const second = new DiskCycle("vdb", "node", size, size, [client], async function* () {}, {});
    expect(await applyResync(differingChunks(second, hashes, stats, hasher), replicaBefore)).toEqual(differ);
    expect(replicaBefore.equals(primary)).toBe(true);
  });

  it.each<{ named: ChunkDigestName; theirs: ChunkDigestName; theirChunk: number; rereads: number | undefined }>([
    { named: "blake3", theirs: "blake3", theirChunk: CHUNK, rereads: undefined },
    { named: "sha256", theirs: "blake3", theirChunk: CHUNK, rereads: 1 },
    { named: "blake3", theirs: "blake3", theirChunk: 2 * CHUNK, rereads: 1 },
  ])(
    "with the digest HelloAck named ($named), it reads before the replica's first hashes come; in another scheme ($theirs, $theirChunk bytes) it reads the disk again in theirs",
    async ({ named, theirs, theirChunk, rereads }) => {
      const size = 100 * CHUNK + 8 * KiB;
      const { dir, img, primary } = await randomPrimary(size, 40, 50);
      const replica = Buffer.from(primary);
      for (const i of [2, 41, 77, 100]) randomBytes(Math.min(CHUNK, size - i * CHUNK)).copy(replica, i * CHUNK);
      const all: Buffer[] = [];
      for (let at = 0; at < size; at += theirChunk) all.push(chunkDigest(theirs, replica.subarray(at, Math.min(at + theirChunk, size))));
      const hashes = new ComparisonHashes(named);
      const client = await exportOf(dir, img);
      let readsDone = 0;
      const read = client.read.bind(client);
      client.read = (offset, length, into) => read(offset, length, into).finally(() => readsDone++);
      hashesAfterFirstUnit(hashes, () => {
        const scheme = { generation: 1n, cycleSequence: 1n, diskId: "vda", chunkBytes: theirChunk, digest: digestToWire(theirs) };
        hashes.add({ ...scheme, firstChunk: 0n, hashes: all.slice(0, 30), last: false });
        hashes.add({ ...scheme, firstChunk: 30n, hashes: all.slice(30), last: true });
      });
      const disk = new DiskCycle("vda", "node", size, size, [client], async function* () {}, {});
      const stats: ResyncStats = { comparedBytes: 0, differingBytes: 0 };
      const hasher = startResyncHasher();
      cleanups.push(() => hasher.close());
      await applyResync(differingChunks(disk, hashes, stats, hasher), replica);
      expect(replica.equals(primary)).toBe(true);
      expect(stats.schemeRereads).toBe(rereads);
      // In their scheme, chunk 2 (data, in the unit hashed before their hashes came) is read twice.
      expect(stats.rereadBytes).toBe(rereads ? undefined : CHUNK);
      expect(stats.comparedBytes).toBe(size);
      // Chunk 41 lies in a run of zeroes: in 128 KiB chunks 40-41 travel as one; 100 is the short last chunk.
      expect(stats.differingBytes).toBe(theirChunk === CHUNK ? 3 * CHUNK + 8 * KiB : 3 * 2 * CHUNK + 8 * KiB);
      // A pass READs 12 pieces of 512 KiB (of 13, one lies wholly in the zero run, known from
      // base:allocation); both of its units start at once, so a pass in another scheme reads them all.
      expect(readsDone).toBe(rereads ? 2 * 12 : 12 + 1);
    },
  );

  /**
   * A primary of `size` bytes (zeroes over chunks [zeroFrom, zeroTo)) and a replica differing at
   * `differ`, resynced with the replica's hashes coming only once its first 4 MiB unit was read and
   * hashed without them; checks the chunks yielded and the result byte for byte.
   */
  async function resyncWithLateHashes(size: number, zeroFrom: number, zeroTo: number, differ: number[]): Promise<ResyncStats> {
    const { dir, img, primary } = await randomPrimary(size, zeroFrom, zeroTo);
    const replica = Buffer.from(primary);
    for (const i of differ) randomBytes(Math.min(CHUNK, size - i * CHUNK)).copy(replica, i * CHUNK);
    const all: Buffer[] = [];
    for (let at = 0; at < size; at += CHUNK) all.push(chunkDigest("blake3", replica.subarray(at, Math.min(at + CHUNK, size))));
    const hashes = new ComparisonHashes("blake3");
    const client = await exportOf(dir, img);
    hashesAfterFirstUnit(hashes, () =>
      hashes.add({ generation: 1n, cycleSequence: 1n, diskId: "vda", chunkBytes: CHUNK, firstChunk: 0n, hashes: all, last: true, digest: digestToWire("blake3") }),
    );
    const disk = new DiskCycle("vda", "node", size, size, [client], async function* () {}, {});
    const stats: ResyncStats = { comparedBytes: 0, differingBytes: 0 };
    const hasher = startResyncHasher();
    cleanups.push(() => hasher.close());
    expect(await applyResync(differingChunks(disk, hashes, stats, hasher), replica)).toEqual(differ);
    expect(replica.equals(primary)).toBe(true);
    expect(stats.comparedBytes).toBe(size);
    return stats;
  }

  it("units hashed before the replica's first hashes come are compared once they do, in disk order; only their differing data chunks are read again", async () => {
    // Three 4 MiB units and a short one. In the first unit: data differing at 3 and 60, zeroes on
    // the primary at 10 (data on the replica).
    const stats = await resyncWithLateHashes(192 * CHUNK + 8 * KiB, 10, 12, [3, 10, 60, 64, 150, 192]);
    expect(stats.rereadBytes).toBe(2 * CHUNK);
    expect(stats.differingBytes).toBe(5 * CHUNK + 8 * KiB);
  });

  it("a unit known to read as zeroes and set aside before the replica's hashes come is compared as zeroes, with nothing read again", async () => {
    // The first 4 MiB unit a hole, then data. Data on the replica where the primary reads zeroes
    // (5, 63); data differing at 70 and in the short last chunk.
    const stats = await resyncWithLateHashes(128 * CHUNK + 8 * KiB, 0, 64, [5, 63, 70, 128]);
    expect(stats.rereadBytes ?? 0).toBe(0);
    expect(stats.knownZeroBytes).toBe(64 * CHUNK);
    expect(stats.differingBytes).toBe(3 * CHUNK + 8 * KiB);
  });
});
