import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ResyncRequiredError, VmCapture } from "../../../replica-agent/capture/index.js";
import { QmpClient } from "../../../src/qemu/qmp/index.js";
import { compareImages } from "../../../src/qemu/processes/index.js";
import { applyExtentsToRaw } from "../../helpers/applyExtents.js";
import { startStorageDaemonVm } from "../../helpers/guestVm.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup() {
  const tmp = makeTmpDir();
  cleanups.push(tmp.cleanup);
  const vm = await startStorageDaemonVm(tmp.path, [{ id: "vda", sizeBytes: 128 * MiB }]);
  cleanups.push(() => vm.proc.kill());
  const connect = async () => {
    const qmp = await QmpClient.connect({ socketPath: vm.qmpSocketPath });
    cleanups.push(() => qmp.close());
    const capture = await VmCapture.open({
      vmId: "vm1",
      qmp,
      disks: [{ id: "vda", node: "node-vda" }],
      stateDir: join(tmp.path, "state"),
      nbdSocketPath: vm.nbdSocketPath,
    });
    return { qmp, capture };
  };
  const replica = join(tmp.path, "replica.raw");
  const cycleToReplica = async (capture: VmCapture, kind: "full" | "incremental") => {
    const cycle = kind === "full" ? await capture.enable() : await capture.beginCycle();
    const disk = cycle.disks[0]!;
    await applyExtentsToRaw(replica, disk.sizeAtCutoff, disk.extents());
    await cycle.confirm();
  };
  return { vm, connect, replica, cycleToReplica };
}

describe("capture across QEMU restarts", () => {
  it("kill -9 of QEMU between cycles: the restarted agent reports resync required and refuses cycles", async () => {
    const { vm, connect, cycleToReplica } = await setup();
    const first = await connect();
    await cycleToReplica(first.capture, "full");
    await vm.guestWrite("vda", ["write -P 0x21 1M 1M"]);
    await cycleToReplica(first.capture, "incremental");
    await vm.guestWrite("vda", ["write -P 0x22 2M 1M"]); // changes QEMU will never persist

    const exit = await vm.proc.kill("SIGKILL");
    expect(exit.signal).toBe("SIGKILL");
    await first.qmp.closed;
    await vm.restart();

    const second = await connect();
    const report = second.capture.report!;
    expect(report.status).toBe("resync-required");
    expect(report.disks[0]!.reason).toMatch(/missing|inconsistent/);
    const err = await second.capture.beginCycle().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ResyncRequiredError);
    expect((err as ResyncRequiredError).code).toBe("RESYNC_REQUIRED");
  });

  it("kill -9 after a clean restart: the persisted bitmap comes back inconsistent, still resync required", async () => {
    const { vm, connect, cycleToReplica } = await setup();
    const first = await connect();
    await cycleToReplica(first.capture, "full");
    await vm.proc.stop(); // clean: the bitmap is written into the qcow2
    await first.qmp.closed;
    await vm.restart();
    const second = await connect();
    expect(second.capture.report!.status).toBe("ok");
    await vm.guestWrite("vda", ["write -P 0x31 5M 1M"]);
    await vm.proc.kill("SIGKILL");
    await second.qmp.closed;
    await vm.restart();
    const third = await connect();
    expect(third.capture.report!.status).toBe("resync-required");
    expect(third.capture.report!.disks[0]!.reason).toMatch(/inconsistent/);
  });

  it("a clean QEMU restart keeps tracking: the next cycle carries the changes from before and after", async () => {
    const { vm, connect, replica, cycleToReplica } = await setup();
    const first = await connect();
    await vm.guestWrite("vda", ["write -P 0x41 0 2M"]);
    await cycleToReplica(first.capture, "full");
    await vm.guestWrite("vda", ["write -P 0x42 4M 1M"]);
    await vm.proc.stop();
    await first.qmp.closed;
    await vm.restart();
    const second = await connect();
    expect(second.capture.report!.status).toBe("ok");
    await vm.guestWrite("vda", ["write -P 0x43 8M 1M"]);
    await cycleToReplica(second.capture, "incremental");
    const cmp = await compareImages(replica, vm.guestUri("vda"), { formatA: "raw", formatB: "raw" });
    expect(cmp.identical).toBe(true);
  });
});
