import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { QmpClient, QmpClosedError, QmpCommandError, QmpConnectError, findBlockNode } from "../../../src/qemu/qmp/index.js";
import { createImage, startStorageDaemon, startSystemVm, type QemuProcess } from "../../../src/qemu/processes/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function storageDaemon(): Promise<{ proc: QemuProcess; qmpSocketPath: string; dir: string }> {
  const tmp = makeTmpDir();
  cleanups.push(tmp.cleanup);
  const disk = join(tmp.path, "d.qcow2");
  await createImage(disk, 64 * 1024 * 1024);
  const qmpSocketPath = join(tmp.path, "qmp.sock");
  const proc = await startStorageDaemon({ qmpSocketPath, disks: [{ nodeName: "disk0", path: disk }] });
  cleanups.push(() => proc.kill());
  return { proc, qmpSocketPath, dir: tmp.path };
}

describe("QMP client", () => {
  it("negotiates capabilities with qemu-storage-daemon and runs commands", async () => {
    const { qmpSocketPath } = await storageDaemon();
    const qmp = await QmpClient.connect({ socketPath: qmpSocketPath });
    cleanups.push(() => qmp.close());
    expect(qmp.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
    const node = await findBlockNode(qmp, "disk0");
    expect(node?.image["virtual-size"]).toBe(64 * 1024 * 1024);
  });

  it("correlates several commands in flight by id", async () => {
    const { qmpSocketPath } = await storageDaemon();
    const qmp = await QmpClient.connect({ socketPath: qmpSocketPath });
    cleanups.push(() => qmp.close());
    const names = Array.from({ length: 20 }, (_, i) => `b${i}`);
    await Promise.all(names.map((name) => qmp.execute("block-dirty-bitmap-add", { node: "disk0", name })));
    const results = await Promise.allSettled([
      qmp.execute("query-version"),
      qmp.execute("block-dirty-bitmap-add", { node: "disk0", name: "b3" }),
      qmp.execute("query-named-block-nodes", { flat: true }),
    ]);
    expect(results[0].status).toBe("fulfilled");
    expect(results[1].status).toBe("rejected");
    expect(results[2].status).toBe("fulfilled");
    const node = await findBlockNode(qmp, "disk0");
    expect(node?.["dirty-bitmaps"]?.map((b) => b.name).sort()).toEqual([...names].sort());
  });

  it("reports QEMU's error class and description", async () => {
    const { qmpSocketPath } = await storageDaemon();
    const qmp = await QmpClient.connect({ socketPath: qmpSocketPath });
    cleanups.push(() => qmp.close());
    const err = await qmp.execute("block-dirty-bitmap-remove", { node: "disk0", name: "nope" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpCommandError);
    expect((err as QmpCommandError).errorClass).toBe("GenericError");
    expect((err as QmpCommandError).message).toMatch(/block-dirty-bitmap-remove.*nope/);
  });

  it("delivers interleaved events and rejects pending commands when QEMU dies", async () => {
    const { proc, qmpSocketPath } = await storageDaemon();
    const qmp = await QmpClient.connect({ socketPath: qmpSocketPath });
    const shutdown = qmp.waitForEvent("SHUTDOWN", () => true, 10_000);
    await qmp.execute("quit").catch(() => undefined);
    await shutdown.catch(() => undefined); // QSD may close before emitting it
    await qmp.closed;
    await expect(qmp.execute("query-version")).rejects.toBeInstanceOf(QmpClosedError);
    await proc.exited;
  });

  it("names the socket and the fix when the monitor is missing", async () => {
    const err = await QmpClient.connect({ socketPath: "/tmp/qr-does-not-exist/qmp.sock" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpConnectError);
    expect((err as Error).message).toMatch(/does not exist.*-mon chardev/s);
  });

  it("works with qemu-system-x86_64 and writes through the device with qemu-io -d", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const disk = join(tmp.path, "vda.qcow2");
    await createImage(disk, 16 * 1024 * 1024);
    const qmpSocketPath = join(tmp.path, "qmp.sock");
    const vm = await startSystemVm({ qmpSocketPath, disks: [{ nodeName: "vda", path: disk }], paused: true, accel: "tcg" });
    cleanups.push(() => vm.kill());
    const qmp = await QmpClient.connect({ socketPath: qmpSocketPath });
    cleanups.push(() => qmp.close());
    const status = await qmp.execute<{ status: string }>("query-status");
    expect(status.status).toBe("prelaunch");
    await qmp.execute("block-dirty-bitmap-add", { node: "vda", name: "probe" });
    const out = await qmp.humanMonitorCommand('qemu-io -d /machine/peripheral/vda-dev/virtio-backend "write -P 0x5a 1M 64k"');
    expect(out).not.toMatch(/error/i);
    const node = await findBlockNode(qmp, "vda");
    expect(node?.["dirty-bitmaps"]?.find((b) => b.name === "probe")?.count).toBe(65536);
  });
});
