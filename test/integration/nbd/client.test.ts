/**
 * NbdClient against a real qemu-storage-daemon (QEMU 7.2), with qemu-io, qemu-img and nbdinfo as
 * independent oracles.
 */
import { createHash, randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_STATE_DIRTY,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NbdClient,
  NbdOptionError,
  NbdReadOnlyError,
  NbdRequestError,
  type NbdExtent,
} from "../../../src/qemu/nbd/index.js";
import { exec, makeTempDir, nbdinfoMap, nbdUri, startQsd, type Qsd } from "./qsd.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

async function collect(it: AsyncIterable<NbdExtent>): Promise<NbdExtent[]> {
  const out: NbdExtent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

/** Runs `tasks` with at most `depth` in flight. */
async function pipelined<T>(tasks: Array<() => Promise<T>>, depth: number): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  let maxInFlight = 0;
  let inFlight = 0;
  await Promise.all(
    Array.from({ length: depth }, async () => {
      while (next < tasks.length) {
        const i = next++;
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        results[i] = await tasks[i]!();
        inFlight--;
      }
    }),
  );
  expect(maxInFlight).toBeGreaterThan(1);
  return results;
}

function sha256(b: Buffer): string {
  return createHash("sha256").update(b).digest("hex");
}

function expectContiguous(extents: NbdExtent[], offset: number, end: number): void {
  let pos = offset;
  for (const e of extents) {
    expect(e.offset).toBe(pos);
    expect(e.length).toBeGreaterThan(0);
    pos += e.length;
  }
  expect(pos).toBe(end);
}

describe("NbdClient against qemu-storage-daemon: writable export", () => {
  const SIZE = 256 * MiB;
  let dir: string;
  let cleanup: () => Promise<void>;
  let image: string;
  let qsd: Qsd | undefined;
  let client: NbdClient;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTempDir("qreplica-nbd-it-"));
    image = path.join(dir, "disk.qcow2");
    await exec("qemu-img", ["create", "-q", "-f", "qcow2", image, String(SIZE)]);
    await exec("qemu-io", ["-f", "qcow2", image, "-c", `write -P 0x5a ${64 * MiB} ${16 * MiB}`]);
    qsd = await startQsd({ dir, image, exports: [{ id: "exp0", name: "disk0", writable: true }] });
    client = await NbdClient.connect({ socketPath: qsd.nbdSocket, exportName: "disk0", metaContexts: ["base:allocation"] });
  });

  afterAll(async () => {
    await client?.disconnect().catch(() => {});
    await qsd?.stop();
    await cleanup?.();
  });

  it("negotiates the export as QSD 7.2 describes it", () => {
    expect(client.size).toBe(SIZE);
    expect(client.readOnly).toBe(false);
    expect(client.structuredReplies).toBe(true);
    expect(client.transmissionFlags & NBD_FLAG_SEND_WRITE_ZEROES).toBeTruthy();
    expect(client.transmissionFlags & NBD_FLAG_SEND_FLUSH).toBeTruthy();
    expect(client.blockSize).toEqual({ minimum: 1, preferred: 4096, maximum: 32 * MiB });
    expect(client.maxRequestBytes).toBe(32 * MiB);
    expect(client.metaContextIds.has("base:allocation")).toBe(true);
  });

  it("reads what qemu-io wrote, and zeroes (holes) where nothing was written", async () => {
    const chunks = await pipelined(
      Array.from({ length: 4 }, (_, i) => () => client.read(64 * MiB + i * 4 * MiB, 4 * MiB)),
      4,
    );
    for (const c of chunks) expect(c.equals(Buffer.alloc(4 * MiB, 0x5a))).toBe(true);
    const hole = await client.read(10 * MiB, 2 * MiB);
    expect(hole.equals(Buffer.alloc(2 * MiB))).toBe(true);
    const edge = await client.read(80 * MiB - 1000, 3000); // data then hole in one reply
    expect(edge.equals(Buffer.concat([Buffer.alloc(1000, 0x5a), Buffer.alloc(2000)]))).toBe(true);
  });

  it("round-trips pipelined writes and reads byte for byte, confirmed by qemu-img convert", async () => {
    const expected = Buffer.alloc(SIZE);
    expected.fill(0x5a, 64 * MiB, 80 * MiB);
    const writes: Array<{ offset: number; data: Buffer }> = [];
    let offset = 3 * KiB; // deliberately not cluster-aligned
    for (let i = 0; offset < SIZE - 8 * MiB; i++) {
      const len = [64 * KiB, 1 * MiB + 512, 4 * MiB, 333 * KiB][i % 4]!;
      writes.push({ offset, data: randomBytes(len) });
      offset += len + (i % 3) * 5 * MiB; // leave gaps, some writes overlap the qemu-io region
    }
    expect(writes.length).toBeGreaterThan(30);
    await pipelined(
      writes.map((w) => () => client.write(w.offset, w.data)),
      16,
    );
    for (const w of writes) w.data.copy(expected, w.offset);
    await client.flush();

    const parts = await pipelined(
      Array.from({ length: SIZE / (8 * MiB) }, (_, i) => () => client.read(i * 8 * MiB, 8 * MiB)),
      12,
    );
    const readBack = Buffer.concat(parts);
    expect(sha256(readBack)).toBe(sha256(expected));

    const raw = path.join(dir, "disk.raw");
    await exec("qemu-img", ["convert", "-U", "-f", "qcow2", "-O", "raw", image, raw]);
    expect(sha256(await readFile(raw))).toBe(sha256(expected));
  });

  it("writeZeroes turns into ZERO extents of base:allocation, matching nbdinfo --map", async () => {
    const base = 200 * MiB;
    const data = randomBytes(4 * MiB);
    await client.write(base, data);
    await client.writeZeroes(base + MiB, 2 * MiB);
    await client.flush();

    const local = await collect(client.extents("base:allocation", base, 4 * MiB));
    expectContiguous(local, base, base + 4 * MiB);
    const zeroed = local.filter((e) => e.offset >= base + MiB && e.offset + e.length <= base + 3 * MiB);
    expect(zeroed.reduce((n, e) => n + e.length, 0)).toBe(2 * MiB);
    for (const e of zeroed) expect(e.flags & NBD_STATE_ZERO).toBe(NBD_STATE_ZERO);
    expect(local[0]).toEqual({ offset: base, length: MiB, flags: 0 });

    const readBack = await client.read(base, 4 * MiB);
    data.fill(0, MiB, 3 * MiB);
    expect(readBack.equals(data)).toBe(true);

    const whole = await collect(client.extents("base:allocation"));
    expectContiguous(whole, 0, SIZE);
    const oracle = await nbdinfoMap(qsd!, "disk0", "base:allocation");
    expect(whole.map((e) => ({ offset: e.offset, length: e.length, type: e.flags }))).toEqual(oracle);
  });

  it("refuses requests larger than maxRequestBytes without sending them, and serves exactly the maximum", async () => {
    const max = client.maxRequestBytes;
    await expect(client.read(0, max + 1)).rejects.toBeInstanceOf(NbdRequestError);
    await expect(client.read(0, max + 1)).rejects.toThrow(/exceeds the 33554432-byte limit.*split it/);
    await expect(client.write(0, Buffer.alloc(max + 4096))).rejects.toBeInstanceOf(NbdRequestError);
    await expect(client.read(SIZE - 4096, 8192)).rejects.toThrow(/runs past the end/);
    const full = await client.read(32 * MiB, max);
    const pieces = await Promise.all([0, 1, 2, 3].map((i) => client.read(32 * MiB + i * 8 * MiB, 8 * MiB)));
    expect(full.equals(Buffer.concat(pieces))).toBe(true);
    expect(client.isClosed).toBe(false);
  });

  it("disconnects cleanly: QSD stays healthy and accepts a new connection", async () => {
    const c = await NbdClient.connect({ socketPath: qsd!.nbdSocket, exportName: "disk0" });
    await c.read(0, 4096);
    await c.disconnect();
    expect(c.closeError).toBeUndefined();
    expect(c.isClosed).toBe(true);
    await c.disconnect(); // idempotent
    expect(qsd!.proc.exitCode).toBeNull();
    const again = await NbdClient.connect({ socketPath: qsd!.nbdSocket, exportName: "disk0" });
    expect((await again.read(64 * MiB, 512)).equals(Buffer.alloc(512, 0x5a))).toBe(true);
    await again.disconnect();
    expect(qsd!.stderr()).not.toMatch(/error/i);
  });

  it("names the export when it does not exist", async () => {
    const err = await NbdClient.connect({ socketPath: qsd!.nbdSocket, exportName: "disk9" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdOptionError);
    expect((err as Error).message).toMatch(/NBD_OPT_GO.*NBD_REP_ERR_UNKNOWN.*"disk9" not found; check the export name/);
  });
});

describe("NbdClient against qemu-storage-daemon: 20 GiB sparse read-only export", () => {
  const SIZE = 20 * GiB;
  let cleanup: () => Promise<void>;
  let qsd: Qsd | undefined;
  let client: NbdClient;

  beforeAll(async () => {
    let dir: string;
    ({ dir, cleanup } = await makeTempDir("qreplica-nbd-it-"));
    const image = path.join(dir, "sparse.qcow2");
    await exec("qemu-img", ["create", "-q", "-f", "qcow2", image, String(SIZE)]);
    const cmds: string[] = [];
    for (let i = 0; i < 60; i++) cmds.push("-c", `write -P ${i + 1} ${i * 331 * MiB + (i % 7) * 64 * KiB} ${64 * KiB * (1 + (i % 5))}`);
    cmds.push("-c", `write -z ${5 * GiB} ${8 * MiB}`, "-c", `write -P 0x77 ${SIZE - 64 * KiB} ${64 * KiB}`);
    await exec("qemu-io", ["-f", "qcow2", image, ...cmds]);
    qsd = await startQsd({ dir, image, exports: [{ id: "exp0", name: "ro", writable: false }] });
    client = await NbdClient.connect({ socketPath: qsd.nbdSocket, exportName: "ro", metaContexts: ["base:allocation"] });
  });

  afterAll(async () => {
    await client?.disconnect().catch(() => {});
    await qsd?.stop();
    await cleanup?.();
  });

  it("covers the whole export with base:allocation extents identical to nbdinfo --map", async () => {
    expect(client.size).toBe(SIZE);
    expect(client.readOnly).toBe(true);
    const extents = await collect(client.extents("base:allocation"));
    expectContiguous(extents, 0, SIZE);
    for (let i = 1; i < extents.length; i++) expect(extents[i]!.flags).not.toBe(extents[i - 1]!.flags);
    const oracle = await nbdinfoMap(qsd!, "ro", "base:allocation");
    expect(extents.map((e) => ({ offset: e.offset, length: e.length, type: e.flags }))).toEqual(oracle);
    const data = extents.filter((e) => (e.flags & NBD_STATE_HOLE) === 0);
    expect(data.length).toBeGreaterThanOrEqual(61);
    const last = extents[extents.length - 1]!;
    expect(last).toEqual({ offset: SIZE - 64 * KiB, length: 64 * KiB, flags: 0 });
  });

  it("answers one blockStatus request with at most a u32 length, from the requested offset", async () => {
    const ext = await client.blockStatus("base:allocation", 4 * GiB, SIZE);
    expect(ext[0]!.offset).toBe(4 * GiB);
    const covered = ext.reduce((n, e) => n + e.length, 0);
    expect(covered).toBeGreaterThan(0);
    expect(covered - ext[ext.length - 1]!.length).toBeLessThan(0xffffffff);
  });

  it("refuses writes on the read-only export without sending them", async () => {
    const err = await client.write(0, Buffer.alloc(4096)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdReadOnlyError);
    expect((err as NbdReadOnlyError).code).toBe("NBD_READ_ONLY");
    await expect(client.writeZeroes(0, 4096)).rejects.toBeInstanceOf(NbdReadOnlyError);
    expect((await client.read(SIZE - 4096, 4096)).equals(Buffer.alloc(4096, 0x77))).toBe(true);
  });
});

describe("NbdClient against qemu-storage-daemon: qemu:dirty-bitmap export", () => {
  let cleanup: () => Promise<void>;
  let qsd: Qsd | undefined;
  let client: NbdClient;
  const dirty: Array<[number, number, number]> = [
    [1 * MiB, 64 * KiB, 0x11],
    [100 * MiB, 3 * MiB, 0x22],
    [1500 * MiB + 64 * KiB, 128 * KiB, 0x33],
  ];

  beforeAll(async () => {
    let dir: string;
    ({ dir, cleanup } = await makeTempDir("qreplica-nbd-it-"));
    const image = path.join(dir, "bm.qcow2");
    await exec("qemu-img", ["create", "-q", "-f", "qcow2", image, String(2 * GiB)]);
    // Written before the bitmap exists: allocated but clean.
    await exec("qemu-io", ["-f", "qcow2", image, "-c", `write -P 0x01 ${50 * MiB} ${MiB}`]);
    await exec("qemu-img", ["bitmap", "--add", image, "b0"]);
    await exec("qemu-io", ["-f", "qcow2", image, ...dirty.flatMap(([o, l, p]) => ["-c", `write -P ${p} ${o} ${l}`])]);
    // A read-only export needs a disabled bitmap (reference §3.1).
    await exec("qemu-img", ["bitmap", "--disable", image, "b0"]);
    qsd = await startQsd({
      dir,
      image,
      readOnlyImage: true,
      exports: [{ id: "exp0", name: "fleece", writable: false, bitmap: "b0" }],
    });
    client = await NbdClient.connect({
      socketPath: qsd.nbdSocket,
      exportName: "fleece",
      metaContexts: ["base:allocation", "qemu:dirty-bitmap:b0"],
    });
  });

  afterAll(async () => {
    await client?.disconnect().catch(() => {});
    await qsd?.stop();
    await cleanup?.();
  });

  it("maps the dirty bitmap like nbdinfo and reads the dirty data back", async () => {
    expect([...client.metaContextIds.keys()].sort()).toEqual(["base:allocation", "qemu:dirty-bitmap:b0"]);
    const extents = await collect(client.extents("qemu:dirty-bitmap:b0"));
    expectContiguous(extents, 0, client.size);
    const oracle = await nbdinfoMap(qsd!, "fleece", "qemu:dirty-bitmap:b0");
    expect(extents.map((e) => ({ offset: e.offset, length: e.length, type: e.flags }))).toEqual(oracle);

    const dirtyExtents = extents.filter((e) => e.flags & NBD_STATE_DIRTY);
    expect(dirtyExtents.map((e) => [e.offset, e.length])).toEqual(dirty.map(([o, l]) => [o, l]));

    const datas = await pipelined(
      dirtyExtents.map((e) => () => client.read(e.offset, e.length)),
      3,
    );
    datas.forEach((d, i) => expect(d.equals(Buffer.alloc(dirty[i]![1], dirty[i]![2]))).toBe(true));

    // Both contexts come back in one reply; each call keeps only its own.
    const alloc = await client.blockStatus("base:allocation", 50 * MiB, MiB);
    expect(alloc[0]).toEqual({ offset: 50 * MiB, length: MiB, flags: 0 });
    const clean = await client.blockStatus("qemu:dirty-bitmap:b0", 50 * MiB, MiB);
    expect(clean[0]!.flags & NBD_STATE_DIRTY).toBe(0);
  });

  it("agrees with nbdinfo on the URI the replication engine would use", async () => {
    const { stdout } = await exec("nbdinfo", ["--map=qemu:dirty-bitmap:b0", "--totals", nbdUri(qsd!, "fleece")]);
    const dirtyLine = stdout.split("\n").find((l) => /\bdirty\b/.test(l) && !/clean/.test(l));
    const dirtyBytes = dirty.reduce((n, [, l]) => n + l, 0);
    expect(dirtyLine?.trim().split(/\s+/)[0]).toBe(String(dirtyBytes));
  });
});
