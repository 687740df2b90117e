import { createHash } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ExtentOutOfRangeError, ReplicaStorage, SiteStorageDaemon } from "../../../src/storage/index.js";
import { compareImages, convertImage, imageInfo } from "../../../src/qemu/processes/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function pattern(byte: number, length: number): Buffer {
  return Buffer.alloc(length, byte);
}

async function sha256OfImage(path: string, dir: string): Promise<string> {
  const raw = join(dir, `h-${Math.random().toString(36).slice(2)}.raw`);
  await convertImage(path, raw, { dstFormat: "raw" });
  const { readFileSync, rmSync } = await import("node:fs");
  const h = createHash("sha256").update(readFileSync(raw)).digest("hex");
  rmSync(raw);
  return h;
}

async function setup() {
  const tmp = makeTmpDir();
  cleanups.push(tmp.cleanup);
  const daemon = await SiteStorageDaemon.start(join(tmp.path, "run"));
  cleanups.push(() => daemon.stop());
  const storage = new ReplicaStorage(join(tmp.path, "storage"), daemon);
  return { dir: tmp.path, daemon, storage };
}

describe("replica storage: qcow2 chains written through the site's storage daemon", () => {
  it("builds base <- rp chain; each point reads back as written; partial overlays never show", async () => {
    const { dir, storage } = await setup();
    const full = await storage.beginPoint("vm1", 1, [{ diskId: "vda", sizeBytes: 64 * MiB }]);
    await full.disk("vda")!.write(0, pattern(0x11, 4 * MiB));
    await full.disk("vda")!.writeZeroes(8 * MiB, 1 * MiB);
    expect(readdirSync(storage.diskDir("vm1", "vda"))).toEqual(["base.qcow2.partial"]);
    const p1 = await full.commit();
    expect(readdirSync(storage.diskDir("vm1", "vda"))).toEqual(["base.qcow2"]);
    const h1 = await sha256OfImage(p1.disks[0]!.imagePath, dir);

    const inc = await storage.beginPoint("vm1", 2, [{ diskId: "vda", sizeBytes: 80 * MiB, parentImage: p1.disks[0]!.imagePath }]);
    await inc.disk("vda")!.write(1 * MiB, pattern(0x22, 1 * MiB));
    await inc.disk("vda")!.writeZeroes(0, 64 * 1024);
    await inc.disk("vda")!.write(70 * MiB, pattern(0x33, 2 * MiB));
    const p2 = await inc.commit();
    const info = await imageInfo(p2.disks[0]!.imagePath);
    expect(info["backing-filename"]).toBe("base.qcow2");
    expect(info["virtual-size"]).toBe(80 * MiB);

    // Expected content of point 2, built independently as a raw file.
    const { writeFileSync, openSync, writeSync, closeSync, ftruncateSync } = await import("node:fs");
    const expected = join(dir, "expected.raw");
    writeFileSync(expected, "");
    const fd = openSync(expected, "r+");
    ftruncateSync(fd, 80 * MiB);
    writeSync(fd, pattern(0x11, 4 * MiB), 0, 4 * MiB, 0);
    writeSync(fd, pattern(0x22, 1 * MiB), 0, 1 * MiB, 1 * MiB);
    writeSync(fd, pattern(0, 64 * 1024), 0, 64 * 1024, 0);
    writeSync(fd, pattern(0x33, 2 * MiB), 0, 2 * MiB, 70 * MiB);
    closeSync(fd);
    expect((await compareImages(p2.disks[0]!.imagePath, expected, { formatB: "raw" })).identical).toBe(true);
    // Point 1 is untouched by point 2.
    expect(await sha256OfImage(p1.disks[0]!.imagePath, dir)).toBe(h1);
  });

  it("a discarded point leaves no trace; an extent beyond the disk is refused", async () => {
    const { storage } = await setup();
    const p1 = await (await storage.beginPoint("vm1", 1, [{ diskId: "vda", sizeBytes: 8 * MiB }])).commit();
    const inc = await storage.beginPoint("vm1", 2, [{ diskId: "vda", sizeBytes: 8 * MiB, parentImage: p1.disks[0]!.imagePath }]);
    await expect(inc.disk("vda")!.write(8 * MiB - 4096, pattern(1, 8192))).rejects.toBeInstanceOf(ExtentOutOfRangeError);
    await inc.discard();
    expect(readdirSync(storage.diskDir("vm1", "vda"))).toEqual(["base.qcow2"]);
  });

  it("after a kill -9 of the storage daemon mid-point, restart removes the partial overlay and orphans", async () => {
    const { dir, daemon, storage } = await setup();
    const p1 = await (await storage.beginPoint("vm1", 1, [{ diskId: "vda", sizeBytes: 8 * MiB }])).commit();
    const inc = await storage.beginPoint("vm1", 2, [{ diskId: "vda", sizeBytes: 8 * MiB, parentImage: p1.disks[0]!.imagePath }]);
    await inc.disk("vda")!.write(0, pattern(7, MiB));
    await daemon.proc.kill("SIGKILL");
    const daemon2 = await SiteStorageDaemon.start(join(dir, "run"));
    cleanups.push(() => daemon2.stop());
    const storage2 = new ReplicaStorage(join(dir, "storage"), daemon2);
    const removed = storage2.removeOrphans("vm1", new Set([p1.disks[0]!.imagePath]));
    expect(removed.map((p) => p.split("/").pop())).toEqual(["rp-00000002.qcow2.partial"]);
    expect(existsSync(p1.disks[0]!.imagePath)).toBe(true);
    // The chain is writable again by the new daemon.
    const again = await storage2.beginPoint("vm1", 3, [{ diskId: "vda", sizeBytes: 8 * MiB, parentImage: p1.disks[0]!.imagePath }]);
    await again.disk("vda")!.write(0, pattern(8, MiB));
    await again.commit();
  });

  it("retention merges the oldest overlay into the base; later points read the same", async () => {
    const { dir, storage } = await setup();
    const p1 = await (await storage.beginPoint("vm1", 1, [{ diskId: "vda", sizeBytes: 8 * MiB }])).commit();
    const w2 = await storage.beginPoint("vm1", 2, [{ diskId: "vda", sizeBytes: 8 * MiB, parentImage: p1.disks[0]!.imagePath }]);
    await w2.disk("vda")!.write(0, pattern(2, MiB));
    const p2 = await w2.commit();
    const w3 = await storage.beginPoint("vm1", 3, [{ diskId: "vda", sizeBytes: 8 * MiB, parentImage: p2.disks[0]!.imagePath }]);
    await w3.disk("vda")!.write(2 * MiB, pattern(3, MiB));
    const p3 = await w3.commit();
    const [h2, h3] = [await sha256OfImage(p2.disks[0]!.imagePath, dir), await sha256OfImage(p3.disks[0]!.imagePath, dir)];
    await storage.mergeIntoBase(p1.disks[0]!.imagePath, p2.disks[0]!.imagePath, p3.disks[0]!.imagePath);
    // Until the ledger says the base is point 2, the overlay still opens as point 2.
    expect(await sha256OfImage(p2.disks[0]!.imagePath, dir)).toBe(h2);
    storage.removeMergedImage(p2.disks[0]!.imagePath);
    expect(existsSync(p2.disks[0]!.imagePath)).toBe(false);
    expect(await sha256OfImage(p1.disks[0]!.imagePath, dir)).toBe(h2); // the base is now point 2
    expect(await sha256OfImage(p3.disks[0]!.imagePath, dir)).toBe(h3);
    expect((await imageInfo(p3.disks[0]!.imagePath))["backing-filename"]).toBe("base.qcow2");
  });
});
