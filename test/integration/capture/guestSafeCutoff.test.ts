import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ScratchSpaceLowError, SnapshotBrokenError, VmCapture, type CaptureCycle } from "../../../replica-agent/capture/index.js";
import { compareImages, createImage } from "../../../src/qemu/processes/index.js";
import { namedBitmaps, queryNamedBlockNodes } from "../../../src/qemu/qmp/index.js";
import { applyExtentsToRaw } from "../../helpers/applyExtents.js";
import { GuestIoVm, mountTmpfs } from "../../helpers/guestIo.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const MiB = 1024 * 1024;
const QDEV = "/machine/peripheral/vda-dev/virtio-backend";
/** Generous: TCG on a shared 2-core machine. The measured value is printed. */
const MAX_VCPU_PAUSE_MS = 3_000;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** What the disk must hold: a raw model written with the same patterns as the guest. */
class DiskModel {
  readonly bytes: Buffer;
  constructor(size: number) {
    this.bytes = Buffer.alloc(size);
  }
  write(pattern: number, offset: number, length: number): void {
    this.bytes.fill(pattern, offset, offset + length);
  }
  snapshot(): Buffer {
    return Buffer.from(this.bytes);
  }
}

async function rawEquals(path: string, expected: Buffer): Promise<boolean> {
  const fh = await open(path, "r");
  try {
    const buf = Buffer.alloc(expected.length);
    await fh.read(buf, 0, buf.length, 0);
    return (await fh.stat()).size === expected.length && buf.equals(expected);
  } finally {
    await fh.close();
  }
}

async function startRunningVm(dir: string, sizeBytes: number): Promise<{ vm: GuestIoVm; disk: string }> {
  const disk = join(dir, "vda.qcow2");
  await createImage(disk, sizeBytes);
  // Not paused: the vCPUs run (SeaBIOS finds nothing to boot and idles), so the cut-off has to stop them.
  const vm = await GuestIoVm.start({ qmpSocketPath: join(dir, "qmp.sock"), disks: [{ nodeName: "vda", path: disk }], accel: "tcg" });
  cleanups.push(() => vm.kill());
  expect((await vm.qmp.execute<{ status: string }>("query-status")).status).toBe("running");
  return { vm, disk };
}

async function deviceNode(vm: GuestIoVm): Promise<string | undefined> {
  const blocks = await vm.qmp.execute<Array<{ qdev?: string; inserted?: { "node-name"?: string } }>>("query-block");
  return blocks.find((b) => b.qdev === QDEV)?.inserted?.["node-name"];
}

async function ourNodes(vm: GuestIoVm): Promise<string[]> {
  return (await queryNamedBlockNodes(vm.qmp)).map((n) => n["node-name"]).filter((n) => n.startsWith("qreplica-"));
}

async function drain(cycle: CaptureCycle): Promise<unknown> {
  try {
    for (const d of cycle.disks) for await (const _ of d.extents()) void _;
    return undefined;
  } catch (err) {
    return err;
  }
}

describe("guest-safe cut-offs on a running qemu-system-x86_64 VM (TCG)", () => {
  it("the guest writes 256 MiB while the scratch is a 16 MiB tmpfs: every write succeeds, the cycle fails and is reported, the next point is byte-identical", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const scratchDir = join(tmp.path, "scratch");
    mkdirSync(scratchDir);
    cleanups.push(mountTmpfs(scratchDir, 16));
    const size = 320 * MiB;
    const { vm, disk } = await startRunningVm(tmp.path, size);
    const model = new DiskModel(size);
    const write = async (pattern: number, offset: number, length: number) => {
      await vm.write(QDEV, pattern, offset, length);
      model.write(pattern, offset, length);
    };
    const capture = await VmCapture.open({
      vmId: "gs",
      qmp: vm.qmp,
      disks: [{ id: "vda", node: "vda" }],
      stateDir: join(tmp.path, "state"),
      scratchDir,
      nbdSocketPath: join(tmp.path, "nbd.sock"),
    });
    const replica = join(tmp.path, "replica.raw");

    await write(0x11, 0, 96 * MiB);
    const full = await capture.enable();
    await applyExtentsToRaw(replica, size, full.disks[0]!.extents());
    await full.confirm();
    expect(await rawEquals(replica, model.bytes)).toBe(true);

    // 64 MiB changed: the cycle's snapshot must preserve those blocks if the guest overwrites them.
    await write(0x22, 0, 64 * MiB);
    const broken = await capture.beginCycle();
    console.log(`vCPU pause of the cut-off: ${broken.vcpuPauseMs?.toFixed(1)} ms`);
    expect(broken.vcpuPauseMs).toBeDefined();
    expect(broken.vcpuPauseMs!).toBeLessThan(MAX_VCPU_PAUSE_MS);
    expect(await deviceNode(vm)).toBe("qreplica-cbw-vda");

    // The guest writes 256 MiB; copying the old 64 MiB cannot fit in 16 MiB of scratch.
    for (let off = 0; off < 256 * MiB; off += 16 * MiB) await write(0x33, off, 16 * MiB);
    await vm.readVerify(QDEV, 0x33, 0, 256 * MiB);
    expect(statfsSync(scratchDir).bavail).toBe(0);
    expect((await vm.qmp.execute<{ status: string }>("query-status")).status).toBe("running");

    const err = await drain(broken);
    expect(err).toBeInstanceOf(SnapshotBrokenError);
    expect((err as SnapshotBrokenError).code).toBe("SNAPSHOT_BROKEN");
    expect((err as Error).message).toContain(scratchDir);
    expect((err as Error).message).toMatch(/filled up/);
    console.log(`reported: ${(err as Error).message}`);
    await broken.abort(err);
    // Aborted: the filter is gone, the device is back on its disk, the scratch is empty again.
    expect(await deviceNode(vm)).toBe("vda");
    expect(await ourNodes(vm)).toEqual([]);
    expect(readdirSync(scratchDir)).toEqual([]);
    // Every change is still recorded for the next cycle: the 64 MiB of the broken cycle and the 256 MiB since.
    const recording = namedBitmaps((await queryNamedBlockNodes(vm.qmp)).find((n) => n["node-name"] === "vda")!).filter((b) => b.recording);
    expect(recording).toHaveLength(1);
    expect(recording[0]!.count).toBe(256 * MiB);

    // A nearly full scratch: nothing is cut, the error names the directory and the fix.
    writeFileSync(join(scratchDir, "filler"), Buffer.alloc(12 * MiB, 1));
    const refused = await capture.beginCycle().catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ScratchSpaceLowError);
    expect((refused as Error).message).toContain(scratchDir);
    expect((refused as Error).message).toMatch(/scratchDir/);
    expect(await ourNodes(vm)).toEqual([]);
    expect(namedBitmaps((await queryNamedBlockNodes(vm.qmp)).find((n) => n["node-name"] === "vda")!).map((b) => b.name)).toEqual([recording[0]!.name]);

    // Space is back: the next cycle carries every change and lands byte-identical to the disk at its cut-off,
    // although the guest writes during its read (4 MiB, within what the scratch holds).
    rmSync(join(scratchDir, "filler"));
    const next = await capture.beginCycle();
    const atCutoff = model.snapshot();
    await write(0x44, 8 * MiB, 4 * MiB);
    const applied = await applyExtentsToRaw(replica, size, next.disks[0]!.extents());
    await next.confirm();
    expect(applied.data).toBe(256 * MiB);
    expect(await rawEquals(replica, atCutoff)).toBe(true);

    // Every guest write landed: the disk, read outside QEMU, is exactly what the guest wrote.
    await vm.quit();
    const expected = join(tmp.path, "expected.raw");
    writeFileSync(expected, model.bytes);
    const cmp = await compareImages(expected, disk, { formatA: "raw", formatB: "qcow2" });
    expect(cmp.detail).toMatch(/identical/i);
    expect(existsSync(join(scratchDir, "gs-vda.scratch.raw"))).toBe(false);
  }, 240_000);

  it("under normal conditions cycles are point-in-time and byte-identical while the guest writes during each read; the pause stays short", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const size = 64 * MiB;
    const { vm, disk } = await startRunningVm(tmp.path, size);
    const model = new DiskModel(size);
    const write = async (pattern: number, offset: number, length: number) => {
      await vm.write(QDEV, pattern, offset, length);
      model.write(pattern, offset, length);
    };
    const capture = await VmCapture.open({
      vmId: "gs2",
      qmp: vm.qmp,
      disks: [{ id: "vda", node: "vda" }],
      stateDir: join(tmp.path, "state"),
      nbdSocketPath: join(tmp.path, "nbd.sock"),
    });
    const replica = join(tmp.path, "replica.raw");
    const pauses: number[] = [];

    await write(0x5a, 4 * MiB, 3 * MiB);
    let cycle = await capture.enable();
    let atCutoff = model.snapshot();
    // Written during the initial read: must not reach this point (the filter keeps the old data).
    await write(0x5b, 5 * MiB, 4 * MiB);
    await applyExtentsToRaw(replica, size, cycle.disks[0]!.extents());
    pauses.push(cycle.vcpuPauseMs!);
    await cycle.confirm();
    expect(await rawEquals(replica, atCutoff)).toBe(true);

    for (let i = 0; i < 4; i++) {
      await write(0x60 + i, (i * 7 + 1) * MiB, 2 * MiB + i * 64 * 1024);
      cycle = await capture.beginCycle();
      atCutoff = model.snapshot();
      // The guest overwrites part of what the cycle is about to read, and writes elsewhere.
      await write(0x70 + i, (i * 7 + 1) * MiB + 512 * 1024, 1 * MiB);
      await write(0x80 + i, 50 * MiB + i * MiB, 256 * 1024);
      await applyExtentsToRaw(replica, size, cycle.disks[0]!.extents());
      pauses.push(cycle.vcpuPauseMs!);
      await cycle.confirm();
      expect(await rawEquals(replica, atCutoff)).toBe(true);
      expect(await deviceNode(vm)).toBe("vda");
      expect(await ourNodes(vm)).toEqual([]);
      expect((await vm.qmp.execute<{ status: string }>("query-status")).status).toBe("running");
    }
    console.log(`vCPU pauses of the cut-offs (ms): ${pauses.map((p) => p.toFixed(1)).join(", ")}`);
    for (const p of pauses) expect(p).toBeLessThan(MAX_VCPU_PAUSE_MS);

    cycle = await capture.beginCycle();
    await applyExtentsToRaw(replica, size, cycle.disks[0]!.extents());
    await cycle.confirm();
    await vm.quit();
    const cmp = await compareImages(replica, disk, { formatA: "raw", formatB: "qcow2" });
    expect(cmp.detail).toMatch(/identical/i);
  }, 240_000);

  it("a crashed agent's filter and nodes are removed at its next start and the guest it left paused runs again", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const size = 32 * MiB;
    const { vm, disk } = await startRunningVm(tmp.path, size);
    const opts = { vmId: "gs3", disks: [{ id: "vda", node: "vda" }], stateDir: join(tmp.path, "state"), nbdSocketPath: join(tmp.path, "nbd.sock") };
    const first = await VmCapture.open({ ...opts, qmp: vm.qmp });
    const replica = join(tmp.path, "replica.raw");
    await vm.write(QDEV, 0x21, 0, 2 * MiB);
    const full = await first.enable();
    await applyExtentsToRaw(replica, size, full.disks[0]!.extents());
    await full.confirm();

    // The agent "dies" with a cycle open: filter under the device, export, scratch file.
    await vm.write(QDEV, 0x22, 1 * MiB, 2 * MiB);
    await first.beginCycle();
    expect(await deviceNode(vm)).toBe("qreplica-cbw-vda");
    // ... and, as if it had died inside the cut-off pause, the guest stopped with the mark set.
    const statePath = join(opts.stateDir, "gs3.capture.json");
    const state = JSON.parse(readFileSync(statePath, "utf8")) as Record<string, unknown>;
    writeFileSync(statePath, JSON.stringify({ ...state, cutoffPauseStartedAt: new Date().toISOString() }));
    await vm.qmp.execute("stop");
    // The guest keeps writing through the filter while nobody reads the cycle.
    await vm.write(QDEV, 0x23, 2 * MiB, 1 * MiB);

    const second = await VmCapture.open({ ...opts, qmp: vm.qmp });
    expect((await vm.qmp.execute<{ status: string }>("query-status")).status).toBe("running");
    expect(await deviceNode(vm)).toBe("vda");
    expect(await ourNodes(vm)).toEqual([]);
    expect(second.report?.status).toBe("ok");
    expect(second.report?.removedLeftovers).toEqual(
      expect.arrayContaining(["export qreplica-exp-vda", `drive of ${QDEV} back to vda`, "node qreplica-cbw-vda", "node qreplica-access-vda", "node qreplica-scratch-vda"]),
    );
    expect(second.report?.mergedBitmaps).toHaveLength(1);

    const next = await second.beginCycle();
    await applyExtentsToRaw(replica, size, next.disks[0]!.extents());
    await next.confirm();
    await vm.quit();
    const cmp = await compareImages(replica, disk, { formatA: "raw", formatB: "qcow2" });
    expect(cmp.detail).toMatch(/identical/i);
  }, 240_000);

  it("one cut-off covers both disks of a two-disk VM: one pause, both points byte-identical at the cut-off", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const size = 32 * MiB;
    const ids = ["vda", "vdb"] as const;
    const paths = ids.map((id) => join(tmp.path, `${id}.qcow2`));
    for (const p of paths) await createImage(p, size);
    const vm = await GuestIoVm.start({ qmpSocketPath: join(tmp.path, "qmp.sock"), disks: ids.map((id, i) => ({ nodeName: id, path: paths[i]! })), accel: "tcg" });
    cleanups.push(() => vm.kill());
    const qdev = (id: string) => `/machine/peripheral/${id}-dev/virtio-backend`;
    const models = ids.map(() => new DiskModel(size));
    const write = async (i: number, pattern: number, offset: number, length: number) => {
      await vm.write(qdev(ids[i]!), pattern, offset, length);
      models[i]!.write(pattern, offset, length);
    };
    const capture = await VmCapture.open({
      vmId: "gs4",
      qmp: vm.qmp,
      disks: ids.map((id) => ({ id, node: id })),
      stateDir: join(tmp.path, "state"),
      nbdSocketPath: join(tmp.path, "nbd.sock"),
    });
    const replicas = ids.map((id) => join(tmp.path, `${id}.replica.raw`));

    await write(0, 0x31, 0, 2 * MiB);
    await write(1, 0x41, 3 * MiB, 2 * MiB);
    for (const kind of ["full", "incremental"] as const) {
      const cycle = kind === "full" ? await capture.enable() : await capture.beginCycle();
      const atCutoff = models.map((m) => m.snapshot());
      await write(0, 0x32, 1 * MiB, 2 * MiB);
      await write(1, 0x42, 4 * MiB, 2 * MiB);
      for (const [i, d] of cycle.disks.entries()) await applyExtentsToRaw(replicas[i]!, size, d.extents());
      await cycle.confirm();
      console.log(`two-disk cut-off (${kind}): vCPU pause ${cycle.vcpuPauseMs?.toFixed(1)} ms`);
      expect(cycle.vcpuPauseMs!).toBeLessThan(MAX_VCPU_PAUSE_MS);
      for (const i of [0, 1]) expect(await rawEquals(replicas[i]!, atCutoff[i]!)).toBe(true);
    }
    const blocks = await vm.qmp.execute<Array<{ qdev?: string; inserted?: { "node-name"?: string } }>>("query-block");
    expect(ids.map((id) => blocks.find((b) => b.qdev === qdev(id))?.inserted?.["node-name"])).toEqual([...ids]);
  }, 240_000);

  it("a step failing inside the cut-off pause still resumes the guest and changes nothing", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const size = 16 * MiB;
    const { vm, disk } = await startRunningVm(tmp.path, size);
    const capture = await VmCapture.open({
      vmId: "gs5",
      qmp: vm.qmp,
      disks: [{ id: "vda", node: "vda" }],
      stateDir: join(tmp.path, "state"),
      nbdSocketPath: join(tmp.path, "nbd.sock"),
    });
    const replica = join(tmp.path, "replica.raw");
    await vm.write(QDEV, 0x51, 0, 1 * MiB);
    const full = await capture.enable();
    await applyExtentsToRaw(replica, size, full.disks[0]!.extents());
    await full.confirm();
    await vm.write(QDEV, 0x52, 2 * MiB, 1 * MiB);
    const bitmapsBefore = namedBitmaps((await queryNamedBlockNodes(vm.qmp)).find((n) => n["node-name"] === "vda")!).map((b) => [b.name, b.recording, b.count]);

    // A node already holding the filter's name makes its blockdev-add fail, with the vCPUs stopped.
    await vm.qmp.execute("blockdev-add", { driver: "null-co", "node-name": "qreplica-cbw-vda", size });
    const failed = await capture.beginCycle().catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(Error);
    expect((failed as Error).message).toMatch(/qreplica-cbw-vda/);
    expect((await vm.qmp.execute<{ status: string }>("query-status")).status).toBe("running");
    expect(await deviceNode(vm)).toBe("vda");
    expect(await ourNodes(vm)).toEqual([]);
    expect(namedBitmaps((await queryNamedBlockNodes(vm.qmp)).find((n) => n["node-name"] === "vda")!).map((b) => [b.name, b.recording, b.count])).toEqual(bitmapsBefore);
    expect(JSON.parse(readFileSync(join(tmp.path, "state", "gs5.capture.json"), "utf8")).cutoffPauseStartedAt).toBeUndefined();

    // The next cycle carries the change.
    const next = await capture.beginCycle();
    await applyExtentsToRaw(replica, size, next.disks[0]!.extents());
    await next.confirm();
    await vm.quit();
    const cmp = await compareImages(replica, disk, { formatA: "raw", formatB: "qcow2" });
    expect(cmp.detail).toMatch(/identical/i);
  }, 240_000);
});
