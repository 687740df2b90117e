import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  buildCounterBootSector,
  decodeCounterRecord,
  encodeCounterRecord,
  makeCounterDisk,
  parseSerialLog,
  readCounters,
  readDiskCounter,
  readDiskRecord,
  readSerialReport,
  waitForCounter,
} from "../../../guest/index.js";
import { kvmUsable, startSystemVm, type QemuProcess, type SystemVmDisk } from "../../../src/qemu/processes/index.js";
import { QmpClient } from "../../../src/qemu/qmp/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Booted {
  proc: QemuProcess;
  qmp: QmpClient;
  serial: string;
  /** ms from spawning QEMU to the guest's first QREPLICA-COUNTER line. */
  bootMs: number;
}

async function boot(dir: string, tag: string, disk: Omit<SystemVmDisk, "nodeName">, accel: "auto" | "tcg" | "kvm"): Promise<Booted> {
  const qmpSocketPath = join(dir, `${tag}.qmp`);
  const serial = join(dir, `${tag}.serial.log`);
  const t0 = Date.now();
  const proc = await startSystemVm({ qmpSocketPath, serialLogPath: serial, accel, disks: [{ nodeName: "disk0", ...disk }] });
  cleanups.push(() => proc.kill());
  const qmp = await QmpClient.connect({ socketPath: qmpSocketPath });
  cleanups.push(() => qmp.close());
  // Generous: on hosts where /dev/kvm emulates 16/32-bit code (kvm-pvm) SeaBIOS takes 5-30 s under load.
  await waitForCounter(serial, () => true, 90_000, { proc });
  return { proc, qmp, serial, bootMs: Date.now() - t0 };
}

async function quit(vm: Booted): Promise<void> {
  await vm.qmp.execute("quit").catch(() => undefined);
  const exit = await vm.proc.exited;
  expect(exit.code).toBe(0);
}

describe("counter guest: record and serial parsing", () => {
  it("encodes and decodes the LBA 1 record; a zero sector is no record", () => {
    const rec = encodeCounterRecord({ counter: 2 ** 40 + 7, boots: 3 });
    expect(rec.length).toBe(512);
    expect(rec.toString("latin1", 0, 8)).toBe("QRCNTR01");
    expect(decodeCounterRecord(rec)).toEqual({ counter: 2 ** 40 + 7, boots: 3 });
    expect(decodeCounterRecord(Buffer.alloc(512))).toBeNull();
  });

  it("parses complete lines only and ignores foreign output", () => {
    const r = parseSerialLog("SeaBIOS noise\r\nQREPLICA-BOOT 2\r\nQREPLICA-COUNTER 41\r\nQREPLICA-COUNTER 42\r\nQREPLICA-COUNTER 4");
    expect(r).toEqual({ boots: [2], counters: [41, 42], errors: [] });
    expect(parseSerialLog("QREPLICA-ERROR WRITE 3\r\n").errors).toEqual(["QREPLICA-ERROR WRITE 3"]);
  });

  it("builds the boot sector once per source hash", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const out = join(tmp.path, "counter.bin");
    const first = await buildCounterBootSector(out);
    const second = await buildCounterBootSector(out);
    expect(first.cached).toBe(false);
    expect(second).toEqual({ ...first, cached: true });
  });
});

describe("counter guest on qemu-system-x86_64", () => {
  // The second boot runs under TCG on purpose: the disk is the guest's only state, so resuming
  // must not depend on the accelerator, and on hosts whose /dev/kvm emulates real mode slowly
  // (kvm-pvm) a second KVM boot would add 5-20 s.
  it(`counts on an IDE disk (accel auto: ${kvmUsable() ? "kvm" : "tcg"}), persists the counter and resumes from it on the next boot (TCG)`, async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const disk = join(tmp.path, "counter.qcow2");
    await makeCounterDisk(disk);
    expect(await readDiskRecord(disk)).toBeNull();

    const first = await boot(tmp.path, "run1", { path: disk, bus: "ide", bootIndex: 0 }, "auto");
    expect(readSerialReport(first.serial).boots).toEqual([1]);
    expect(readCounters(first.serial)[0]).toBe(0);
    await waitForCounter(first.serial, (v) => v >= 8, 20_000, { proc: first.proc });

    // While QEMU runs, -U reads see the guest's writes (the cluster is allocated in this image).
    const printedBefore = readCounters(first.serial).at(-1)!;
    const live = await readDiskCounter(disk);
    expect(live).toBeGreaterThanOrEqual(printedBefore);

    await quit(first);
    const lastPrinted = readCounters(first.serial).at(-1)!;
    const counters = readCounters(first.serial);
    expect(counters).toEqual(counters.map((_, i) => i)); // 0, 1, 2, ... no gap, no repeat
    const onDisk = await readDiskRecord(disk);
    // The guest prints after each write returns: the disk holds the last printed value, or one
    // more when QEMU quit between a write and its line.
    expect(onDisk!.counter).toBeGreaterThanOrEqual(lastPrinted);
    expect(onDisk!.counter).toBeLessThanOrEqual(lastPrinted + 1);
    expect(onDisk!.boots).toBe(1);

    const second = await boot(tmp.path, "run2", { path: disk, bus: "ide", bootIndex: 0 }, "tcg");
    expect(readSerialReport(second.serial).boots).toEqual([2]);
    expect(readCounters(second.serial)[0]).toBe(onDisk!.counter);
    await waitForCounter(second.serial, (v) => v >= onDisk!.counter + 3, 20_000, { proc: second.proc });
    await quit(second);
    expect(await readDiskCounter(disk)).toBeGreaterThanOrEqual(onDisk!.counter + 3);
    console.info(`counter guest boot (spawn to first counter line), IDE: ${kvmUsable() ? "kvm" : "tcg"} ${first.bootMs} ms, then tcg ${second.bootMs} ms`);
  });

  it("counts on a virtio-blk disk under TCG and prints 64-bit values in decimal across 2^32", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const disk = join(tmp.path, "counter.qcow2");
    const start = 2 ** 32 - 3;
    await makeCounterDisk(disk, { initialRecord: { counter: start, boots: 9 } });

    const vm = await boot(tmp.path, "tcg", { path: disk, bus: "virtio", bootIndex: 0 }, "tcg");
    expect(readSerialReport(vm.serial).boots).toEqual([10]);
    await waitForCounter(vm.serial, (v) => v >= 2 ** 32 + 2, 20_000, { proc: vm.proc });
    await quit(vm);
    const counters = readCounters(vm.serial);
    expect(counters.slice(0, 6)).toEqual([start, start + 1, start + 2, start + 3, start + 4, start + 5]);
    expect(await readDiskCounter(disk)).toBeGreaterThanOrEqual(counters.at(-1)!);
    console.info(`counter guest boot (spawn to first counter line), tcg, virtio-blk: ${vm.bootMs} ms`);
  });
});
