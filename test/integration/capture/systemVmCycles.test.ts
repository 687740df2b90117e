import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { VmCapture } from "../../../replica-agent/capture/index.js";
import { QmpClient } from "../../../src/qemu/qmp/index.js";
import { compareImages, createImage, startSystemVm, type QemuProcess } from "../../../src/qemu/processes/index.js";
import { applyExtentsToRaw } from "../../helpers/applyExtents.js";
import { deviceWrite } from "../../helpers/guestVm.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe("capture cycles against qemu-system-x86_64 (TCG, no OS, paused)", () => {
  it("cycles with device writes, a disk resize included, rebuild the disk byte for byte", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const disk = join(tmp.path, "vda.qcow2");
    await createImage(disk, 64 * MiB);
    const qmpSocketPath = join(tmp.path, "qmp.sock");
    const vm: QemuProcess = await startSystemVm({ qmpSocketPath, disks: [{ nodeName: "vda", path: disk }], paused: true, accel: "tcg" });
    cleanups.push(() => vm.kill());
    const qmp = await QmpClient.connect({ socketPath: qmpSocketPath });
    cleanups.push(() => qmp.close());
    const capture = await VmCapture.open({
      vmId: "sysvm",
      qmp,
      disks: [{ id: "vda", node: "vda" }],
      stateDir: join(tmp.path, "state"),
      nbdSocketPath: join(tmp.path, "nbd.sock"),
    });
    const replica = join(tmp.path, "replica.raw");
    const write = (cmd: string) => deviceWrite(qmp, "vda-dev", cmd);
    const cycle = async (kind: "full" | "incremental") => {
      const c = kind === "full" ? await capture.enable() : await capture.beginCycle();
      const d = c.disks[0]!;
      const totals = await applyExtentsToRaw(replica, d.sizeAtCutoff, d.extents());
      await c.confirm();
      return { size: d.sizeAtCutoff, ...totals };
    };

    await write("write -P 0x5a 4M 192k");
    expect((await cycle("full")).data).toBe(192 * 1024);
    await write("write -P 0x6b 1M 1M");
    await write("write -z 4M 64k");
    await cycle("incremental");
    await write("write -P 0x7c 60M 4M");
    await cycle("incremental");

    // Growth: the new tail is clean in the bitmap; writes there are tracked and the size travels.
    await qmp.execute("block_resize", { "node-name": "vda", size: 96 * MiB });
    await write("write -P 0x8d 90M 2M");
    await write("write -P 0x9e 0 64k");
    const grown = await cycle("incremental");
    expect(grown.size).toBe(96 * MiB);
    expect(grown.data).toBe(2 * MiB + 64 * 1024);

    // Only a cleanly closed image is safe to read from outside QEMU.
    await qmp.execute("quit").catch(() => undefined);
    await vm.exited;
    const cmp = await compareImages(replica, disk, { formatA: "raw", formatB: "qcow2" });
    expect(cmp.detail).toMatch(/identical/i);
    expect(cmp.identical).toBe(true);
  });
});
