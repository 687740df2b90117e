import { statSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { VmCapture, type CaptureCycle } from "../../../replica-agent/capture/index.js";
import { QmpClient, findBlockNode } from "../../../src/qemu/qmp/index.js";
import { compareImages, convertImage, imageInfo } from "../../../src/qemu/processes/index.js";
import { applyExtentsToRaw } from "../../helpers/applyExtents.js";
import { startStorageDaemonVm, type StorageDaemonVm } from "../../helpers/guestVm.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(disks = [{ id: "vda", sizeBytes: 256 * MiB }]) {
  const tmp = makeTmpDir();
  cleanups.push(tmp.cleanup);
  const vm = await startStorageDaemonVm(tmp.path, disks);
  cleanups.push(() => vm.proc.kill());
  const qmp = await QmpClient.connect({ socketPath: vm.qmpSocketPath });
  cleanups.push(() => qmp.close());
  const openCapture = (client: QmpClient) =>
    VmCapture.open({
      vmId: "vm1",
      qmp: client,
      disks: vm.disks.map((d) => ({ id: d.id, node: d.node })),
      stateDir: join(tmp.path, "state"),
      nbdSocketPath: vm.nbdSocketPath,
      read: { readRequestBytes: 2 * MiB, maxInFlight: 4, pieceBytes: 1 * MiB },
    });
  const capture = await openCapture(qmp);
  return { dir: tmp.path, vm, qmp, capture, openCapture };
}

/** Applies every disk of a cycle to `<dir>/replica-<disk>.raw`, then confirms the cycle. */
async function applyAndConfirm(dir: string, cycle: CaptureCycle) {
  const totals: Record<string, { data: number; zero: number; extents: number }> = {};
  for (const d of cycle.disks) totals[d.diskId] = await applyExtentsToRaw(join(dir, `replica-${d.diskId}.raw`), d.sizeAtCutoff, d.extents());
  await cycle.confirm();
  return totals;
}

async function expectReplicaEqualsGuest(vm: StorageDaemonVm, dir: string, diskId: string) {
  const result = await compareImages(join(dir, `replica-${diskId}.raw`), vm.guestUri(diskId), { formatA: "raw", formatB: "raw" });
  expect(result.detail).toMatch(/identical/i);
  const [replicaSize, guestSize] = [statSync(join(dir, `replica-${diskId}.raw`)).size, (await imageInfo(vm.guestUri(diskId)))["virtual-size"]];
  expect(replicaSize).toBe(guestSize);
  expect(result.identical).toBe(true);
}

describe("capture cycles against qemu-storage-daemon", () => {
  it("enable + 3 cycles with data and zero writes rebuild the disk byte for byte", async () => {
    const { dir, vm, capture } = await setup();
    expect(capture.report?.status).toBe("not-enabled");
    await vm.guestWrite("vda", ["write -P 0x11 0 4M", "write -P 0x22 100M 1M", "write -z 50M 2M"]);

    const full = await capture.enable();
    expect(full.kind).toBe("full");
    const t0 = await applyAndConfirm(dir, full);
    // Holes and zeroes are not read: only the two written ranges carry data.
    expect(t0.vda!.data).toBe(5 * MiB);
    await expectReplicaEqualsGuest(vm, dir, "vda");

    const writes = [
      ["write -P 0x33 1M 64k", "write -P 0x44 200M 3M", "write -z 100M 512k"],
      ["write -P 0x55 0 8M", "write -z 200M 1M", "write -P 0x66 255M 1M"],
      ["write -P 0x77 12345k 7k", "write -z 0 64k"],
    ];
    let seq = full.seq;
    for (const w of writes) {
      await vm.guestWrite("vda", w);
      const cycle = await capture.beginCycle();
      expect(cycle.seq).toBe(++seq);
      expect(cycle.kind).toBe("incremental");
      const t = await applyAndConfirm(dir, cycle);
      // Only changed blocks travel (64 KiB bitmap granularity), never the whole disk.
      expect(t.vda!.data + t.vda!.zero).toBeLessThan(16 * MiB);
      await expectReplicaEqualsGuest(vm, dir, "vda");
    }
    // Confirmed cycles leave exactly one recording bitmap and no fleece nodes behind.
    const node = await findBlockNode(capture["opts"].qmp, "node-vda");
    expect(node?.["dirty-bitmaps"]?.filter((b) => b.name?.startsWith("qreplica-")).map((b) => [b.name, b.recording])).toEqual([[`qreplica-${seq}`, true]]);
  });

  it("a cycle is point-in-time: writes during the read belong to the next cycle", async () => {
    const { dir, vm, capture } = await setup();
    await applyAndConfirm(dir, await capture.enable());
    await vm.guestWrite("vda", ["write -P 0xa1 0 32M"]);
    const atCutoff = join(dir, "at-cutoff.raw");
    await convertImage(vm.guestUri("vda"), atCutoff, { srcFormat: "raw", dstFormat: "raw" });

    const cycle = await capture.beginCycle();
    const disk = cycle.disks[0]!;
    let overwritten = false;
    async function* overwriteDuringRead() {
      for await (const e of disk.extents()) {
        if (!overwritten) {
          // Overwrites both what was read already and what is still to come.
          await vm.guestWrite("vda", ["write -P 0xb2 0 32M", "write -P 0xc3 64M 1M"]);
          overwritten = true;
        }
        yield e;
      }
    }
    await applyExtentsToRaw(join(dir, "replica-vda.raw"), disk.sizeAtCutoff, overwriteDuringRead());
    await cycle.confirm();
    expect(overwritten).toBe(true);
    const vsCutoff = await compareImages(join(dir, "replica-vda.raw"), atCutoff, { formatA: "raw", formatB: "raw" });
    expect(vsCutoff.identical).toBe(true);

    const next = await capture.beginCycle();
    const t = await applyAndConfirm(dir, next);
    expect(t.vda!.data).toBe(33 * MiB);
    await expectReplicaEqualsGuest(vm, dir, "vda");
  });

  it("an aborted cycle loses nothing: the next cycle returns its blocks too", async () => {
    const { dir, vm, capture } = await setup();
    await applyAndConfirm(dir, await capture.enable());
    await vm.guestWrite("vda", ["write -P 0x5e 10M 6M", "write -z 40M 1M"]);
    const failed = await capture.beginCycle();
    let seen = 0;
    for await (const e of failed.disks[0]!.extents()) {
      // The reader dies part-way: these bytes never reach the replica.
      seen += e.length;
      break;
    }
    expect(seen).toBeGreaterThan(0);
    await failed.abort(new Error("replica went away"));
    await expect(failed.confirm()).rejects.toThrow(/already aborted/);

    await vm.guestWrite("vda", ["write -P 0x6f 20M 1M"]);
    const next = await capture.beginCycle();
    expect(next.seq).toBe(failed.seq + 1);
    const t = await applyAndConfirm(dir, next);
    expect(t.vda!.data).toBeGreaterThanOrEqual(7 * MiB);
    await expectReplicaEqualsGuest(vm, dir, "vda");
  });

  it("an agent that dies mid-cycle is repaired at the next start: leftovers removed, changes merged", async () => {
    const { dir, vm, qmp, capture, openCapture } = await setup();
    await applyAndConfirm(dir, await capture.enable());
    await vm.guestWrite("vda", ["write -P 0x42 3M 2M"]);
    const orphan = await capture.beginCycle();
    expect(orphan.disks[0]!.dirtyBytes).toBe(2 * MiB);
    await qmp.close(); // the agent is gone without confirming or aborting

    const qmp2 = await QmpClient.connect({ socketPath: vm.qmpSocketPath });
    cleanups.push(() => qmp2.close());
    const restarted = await openCapture(qmp2);
    const report = restarted.report!;
    expect(report.status).toBe("ok");
    expect(report.removedLeftovers.sort()).toEqual(["export qreplica-exp-vda", "job qreplica-job-vda", "node qreplica-fleece-vda"]);
    expect(report.mergedBitmaps).toEqual([`vda:qreplica-${orphan.seq - 1}`]);

    await vm.guestWrite("vda", ["write -P 0x43 9M 1M"]);
    const t = await applyAndConfirm(dir, await restarted.beginCycle());
    expect(t.vda!.data).toBe(3 * MiB);
    await expectReplicaEqualsGuest(vm, dir, "vda");
  });

  it("one cut-off covers every disk of the VM", async () => {
    const { dir, vm, capture } = await setup([
      { id: "vda", sizeBytes: 64 * MiB },
      { id: "vdb", sizeBytes: 32 * MiB },
    ]);
    await vm.guestWrite("vda", ["write -P 0x01 0 1M"]);
    await vm.guestWrite("vdb", ["write -P 0x02 1M 1M"]);
    await applyAndConfirm(dir, await capture.enable());
    await vm.guestWrite("vda", ["write -P 0x03 5M 1M"]);
    await vm.guestWrite("vdb", ["write -P 0x04 7M 2M"]);
    const cycle = await capture.beginCycle();
    expect(cycle.disks.map((d) => [d.diskId, d.sizeAtCutoff, d.dirtyBytes])).toEqual([
      ["vda", 64 * MiB, 1 * MiB],
      ["vdb", 32 * MiB, 2 * MiB],
    ]);
    await applyAndConfirm(dir, cycle);
    await expectReplicaEqualsGuest(vm, dir, "vda");
    await expectReplicaEqualsGuest(vm, dir, "vdb");
  });
});
