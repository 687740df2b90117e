/**
 * Guest-safe cut-offs where the guest device does not sit directly on the disk node: behind a
 * throttle filter (the copy-before-write filter goes between the throttle and the disk node, by
 * blockdev-reopen of the throttle); and a virtio-blk device with its own iothread, which QEMU 7.2
 * cannot export safely (it aborts the VM), so the agent refuses to cut it.
 */
import { open } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { IothreadDiskError, VmCapture, type CaptureCycle } from "../../../replica-agent/capture/index.js";
import { compareImages, createImage } from "../../../src/qemu/processes/index.js";
import { queryNamedBlockNodes, type QmpClient } from "../../../src/qemu/qmp/index.js";
import { applyExtentsToRaw } from "../../helpers/applyExtents.js";
import { GuestIoVm } from "../../helpers/guestIo.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const MiB = 1024 * 1024;
const QDEV = "/machine/peripheral/vda-dev/virtio-backend";
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

type Layout = { throttle: boolean; iothread: boolean };

/** A running VM (TCG, no OS) whose virtio-blk disk is qcow2 node `vda`, maybe under throttle `vda-thr`, maybe on iothread io0. */
async function startVm(dir: string, size: number, layout: Layout): Promise<{ vm: GuestIoVm; disk: string }> {
  const disk = join(dir, "vda.qcow2");
  await createImage(disk, size);
  const args = [
    ...(layout.iothread ? ["-object", "iothread,id=io0"] : []),
    "-blockdev",
    `driver=file,node-name=vda-file,filename=${disk}`,
    "-blockdev",
    "driver=qcow2,node-name=vda,file=vda-file",
    // A limit far above what the test writes: the filter is in the path, not in the way.
    ...(layout.throttle ? ["-object", "throttle-group,id=tg0,x-bps-total=4000000000", "-blockdev", "driver=throttle,node-name=vda-thr,throttle-group=tg0,file=vda"] : []),
    "-device",
    `virtio-blk-pci,drive=${layout.throttle ? "vda-thr" : "vda"},id=vda-dev${layout.iothread ? ",iothread=io0" : ""}`,
  ];
  const vm = await GuestIoVm.start({ qmpSocketPath: join(dir, "qmp.sock"), disks: [], extraArgs: args, accel: "tcg" });
  cleanups.push(() => vm.kill());
  return { vm, disk };
}

interface Graph {
  nodes: Array<{ id: number; name: string }>;
  edges: Array<{ parent: number; child: number; name: string }>;
}

/** parent -> its `file`/`root` child, by name: the path from the device down to the disk. */
async function chain(qmp: QmpClient): Promise<string[]> {
  const g = await qmp.execute<Graph>("x-debug-query-block-graph");
  const name = (id: number) => g.nodes.find((n) => n.id === id)?.name ?? "?";
  const path = [QDEV];
  let current = g.nodes.find((n) => n.name === QDEV)!.id;
  for (;;) {
    const e = g.edges.find((x) => x.parent === current && (x.name === "root" || x.name === "file"));
    if (!e) return path;
    path.push(name(e.child));
    current = e.child;
  }
}

async function ourNodes(qmp: QmpClient): Promise<string[]> {
  return (await queryNamedBlockNodes(qmp)).map((n) => n["node-name"]).filter((n) => n.startsWith("qreplica-"));
}

class DiskModel {
  readonly bytes: Buffer;
  constructor(size: number) {
    this.bytes = Buffer.alloc(size);
  }
  write(pattern: number, offset: number, length: number): void {
    this.bytes.fill(pattern, offset, offset + length);
  }
}

async function rawEquals(path: string, expected: Buffer): Promise<boolean> {
  const fh = await open(path, "r");
  try {
    const buf = Buffer.alloc(expected.length);
    await fh.read(buf, 0, buf.length, 0);
    return buf.equals(expected);
  } finally {
    await fh.close();
  }
}

/**
 * The initial cycle and three incremental ones, the guest writing during each read (inside and
 * outside the cycle's changes): every point equals the disk at its cut-off, the graph is back to
 * what it was after every cycle, and the disk equals the last point byte for byte.
 */
async function runCycles(layout: Layout): Promise<void> {
  const tmp = makeTmpDir();
  cleanups.push(tmp.cleanup);
  const size = 48 * MiB;
  const { vm, disk } = await startVm(tmp.path, size, layout);
  const before = await chain(vm.qmp);
  const model = new DiskModel(size);
  const write = async (pattern: number, offset: number, length: number) => {
    await vm.write(QDEV, pattern, offset, length);
    model.write(pattern, offset, length);
  };
  const added: Array<Record<string, unknown>> = [];
  const execute = vm.qmp.execute.bind(vm.qmp);
  vm.qmp.execute = (async (command: string, args?: Record<string, unknown>, o?: { timeoutMs?: number }) => {
    if (command === "blockdev-add" && args?.driver === "copy-before-write") added.push(args);
    return execute(command, args, o);
  }) as QmpClient["execute"];
  const capture = await VmCapture.open({
    vmId: "f",
    qmp: vm.qmp,
    disks: [{ id: "vda", node: "vda" }],
    stateDir: join(tmp.path, "state"),
    nbdSocketPath: join(tmp.path, "nbd.sock"),
    cbwTimeoutSeconds: 3,
  });
  const replica = join(tmp.path, "replica.raw");

  await write(0x11, 2 * MiB, 3 * MiB);
  for (let i = 0; i < 4; i++) {
    const cycle: CaptureCycle = i === 0 ? await capture.enable() : await capture.beginCycle();
    const atCutoff = Buffer.from(model.bytes);
    // Right above the disk node, below whatever was above it.
    expect(await chain(vm.qmp)).toEqual([...before.slice(0, -2), "qreplica-cbw-vda", ...before.slice(-2)]);
    await write(0x20 + i, 2 * MiB + i * MiB, 1 * MiB);
    await write(0x30 + i, 30 * MiB + i * MiB, 512 * 1024);
    await applyExtentsToRaw(replica, size, cycle.disks[0]!.extents());
    await cycle.confirm();
    expect(await rawEquals(replica, atCutoff)).toBe(true);
    expect(await chain(vm.qmp)).toEqual(before);
    expect(await ourNodes(vm.qmp)).toEqual([]);
    expect((await vm.qmp.execute<{ status: string }>("query-status")).status).toBe("running");
    await write(0x40 + i, 10 * MiB + i * 2 * MiB, 2 * MiB);
  }
  const last = await capture.beginCycle();
  await applyExtentsToRaw(replica, size, last.disks[0]!.extents());
  await last.confirm();
  // The configured cbw-timeout is what QEMU was given, with break-snapshot, on every cut-off.
  expect(added).toHaveLength(5);
  for (const a of added) expect(a).toMatchObject({ file: "vda", "cbw-timeout": 3, "on-cbw-error": "break-snapshot" });
  await vm.quit();
  const cmp = await compareImages(replica, disk, { formatA: "raw", formatB: "qcow2" });
  expect(cmp.detail).toMatch(/identical/i);
}

describe("guest-safe cut-offs through filters and iothreads (qemu-system-x86_64, TCG)", () => {
  it("a disk behind a throttle filter: the copy-before-write filter goes between the throttle and the disk node, points are byte-identical, the graph is restored after each cycle", async () => {
    await runCycles({ throttle: true, iothread: false });
  }, 240_000);

  it("a disk directly under its device (the usual case, same checks)", async () => {
    await runCycles({ throttle: false, iothread: false });
  }, 240_000);

  for (const throttle of [false, true]) {
    it(`a virtio-blk device with its own iothread${throttle ? " behind a throttle filter" : ""}: no cut-off is taken (QEMU 7.2 aborts the VM when an NBD reader of such a disk disconnects), the error says why and what to do, nothing changes`, async () => {
      const tmp = makeTmpDir();
      cleanups.push(tmp.cleanup);
      const { vm } = await startVm(tmp.path, 16 * MiB, { throttle, iothread: true });
      const before = await chain(vm.qmp);
      await vm.write(QDEV, 0x51, 0, 1 * MiB);
      const capture = await VmCapture.open({
        vmId: "f3",
        qmp: vm.qmp,
        disks: [{ id: "vda", node: "vda" }],
        stateDir: join(tmp.path, "state"),
        nbdSocketPath: join(tmp.path, "nbd.sock"),
      });
      const err = await capture.enable().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(IothreadDiskError);
      expect((err as IothreadDiskError).code).toBe("IOTHREAD_UNSUPPORTED");
      expect((err as Error).message).toContain(`device ${QDEV} runs its I/O in iothread /objects/io0`);
      expect((err as Error).message).toMatch(/without iothread=/);
      expect(await chain(vm.qmp)).toEqual(before);
      expect(await ourNodes(vm.qmp)).toEqual([]);
      expect(await vm.qmp.execute("query-block-exports")).toEqual([]);
      expect((await vm.qmp.execute<{ status: string }>("query-status")).status).toBe("running");
      await vm.readVerify(QDEV, 0x51, 0, 1 * MiB);
      await vm.quit();
    }, 120_000);
  }

  it("a crashed agent's filter under a throttle is taken out at the next start: the throttle's file is the disk node again", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const size = 16 * MiB;
    const { vm, disk } = await startVm(tmp.path, size, { throttle: true, iothread: false });
    const opts = { vmId: "f2", disks: [{ id: "vda", node: "vda" }], stateDir: join(tmp.path, "state"), nbdSocketPath: join(tmp.path, "nbd.sock") };
    const first = await VmCapture.open({ ...opts, qmp: vm.qmp });
    const replica = join(tmp.path, "replica.raw");
    await vm.write(QDEV, 0x21, 0, 2 * MiB);
    const full = await first.enable();
    await applyExtentsToRaw(replica, size, full.disks[0]!.extents());
    await full.confirm();
    await vm.write(QDEV, 0x22, 1 * MiB, 2 * MiB);
    await first.beginCycle(); // and the agent "dies" with it open
    expect(await chain(vm.qmp)).toEqual([QDEV, "vda-thr", "qreplica-cbw-vda", "vda", "vda-file"]);
    await vm.write(QDEV, 0x23, 2 * MiB, 1 * MiB);

    const second = await VmCapture.open({ ...opts, qmp: vm.qmp });
    expect(await chain(vm.qmp)).toEqual([QDEV, "vda-thr", "vda", "vda-file"]);
    expect(await ourNodes(vm.qmp)).toEqual([]);
    expect(second.report?.removedLeftovers).toEqual(expect.arrayContaining(["file of vda-thr back to vda", "node qreplica-cbw-vda"]));
    const next = await second.beginCycle();
    await applyExtentsToRaw(replica, size, next.disks[0]!.extents());
    await next.confirm();
    await vm.quit();
    const cmp = await compareImages(replica, disk, { formatA: "raw", formatB: "qcow2" });
    expect(cmp.detail).toMatch(/identical/i);
  }, 240_000);
});
