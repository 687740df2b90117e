import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { makeCounterDisk, readCounters, readDiskCounter, readDiskRecord, waitForCounter } from "../../../guest/index.js";
import { kvmUsable } from "../../../src/qemu/processes/index.js";
import {
  createThrowawayOverlay,
  launchVm,
  nicArgs,
  OverlayError,
  validateVmSpec,
  VmLaunchError,
  VmSpecError,
  type LaunchedVm,
  type VmSpec,
} from "../../../src/site/launcher/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const counterSpec: VmSpec = {
  machine: "q35",
  cpus: 1,
  memoryMiB: 64,
  disks: [{ diskId: "disk0", bus: "ide", bootIndex: 0 }],
  // No iPXE ROM: the boot sector never network-boots, and the ROM's init is slow on emulated CPUs.
  nics: [{ id: "nic0", model: "e1000", mac: "52:54:00:12:34:56", network: "prod", pxe: false }],
};

const sha256 = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

function problemsOf(spec: unknown): string[] {
  try {
    validateVmSpec(spec);
  } catch (err) {
    expect(err).toBeInstanceOf(VmSpecError);
    return [...(err as VmSpecError).problems];
  }
  return [];
}

describe("VmSpec validation", () => {
  it("accepts a good spec and normalises it", () => {
    expect(validateVmSpec({ ...counterSpec, nics: [{ ...counterSpec.nics[0]!, mac: "52:54:00:AB:CD:EF" }] })).toEqual({
      ...counterSpec,
      nics: [{ ...counterSpec.nics[0]!, mac: "52:54:00:ab:cd:ef" }],
      extraArgs: [],
    });
  });

  it("reports every bad field at once, each naming the field and the fix", () => {
    const problems = problemsOf({
      machine: "Q35 !",
      cpus: 0,
      memoryMiB: 1.5,
      disks: [
        { diskId: "0bad", bus: "scsi", bootIndex: 0 },
        { diskId: "d1", bus: "virtio", bootIndex: 0 },
      ],
      nics: [
        { id: "d1", model: "ne2k", mac: "01:00:5e:00:00:01" },
        { id: "n2", model: "e1000", mac: "52-54-00-00-00-01" },
      ],
      extraArgs: ["-device", "virtio-rng-pci", "-drive", "file=x"],
      colour: "blue",
    });
    const expectProblem = (re: RegExp) =>
      expect(
        problems.some((p) => re.test(p)),
        `${re} in ${JSON.stringify(problems, null, 1)}`,
      ).toBe(true);
    expectProblem(/^colour: unknown field/);
    expectProblem(/^machine: must be a QEMU machine type such as "q35"/);
    expectProblem(/^cpus: must be an integer from 1 to/);
    expectProblem(/^memoryMiB: must be an integer/);
    expectProblem(/^disks\[0\]\.diskId: must start with a letter/);
    expectProblem(/^disks\[0\]\.bus: must be one of "virtio", "ide", got "scsi"/);
    expectProblem(/^disks\[1\]\.bootIndex: 0 is already used by disks\[0\]/);
    expectProblem(/^nics\[0\]\.id: id "d1" is already used by disks\[1\]\.diskId/);
    expectProblem(/^nics\[0\]\.model: must be one of "virtio-net-pci"/);
    expectProblem(/^nics\[0\]\.mac: .* multicast .*use a unicast one/);
    expectProblem(/^nics\[1\]\.mac: must be six hex octets separated by ':'/);
    expectProblem(/^extraArgs\[2\]: -drive is managed by the launcher; list the disk in spec\.disks/);
    expect(problems).toHaveLength(12);
    expect(problemsOf(null)).toEqual([expect.stringMatching(/must be an object/)]);
    expect(problemsOf({ ...counterSpec, disks: [] })).toEqual([expect.stringMatching(/^disks: must be a non-empty array/)]);
  });

  it("maps networks: isolated by default, mapped names to backends, unmapped names refused", () => {
    const nics = [
      { id: "a", model: "virtio-net-pci" as const, mac: "52:54:00:00:00:01", network: "prod" },
      { id: "b", model: "e1000" as const, mac: "52:54:00:00:00:02", pxe: false },
    ];
    expect(nicArgs("vm", nics, "isolated")).toEqual([
      "-netdev",
      "user,id=net-a,restrict=on",
      "-device",
      "virtio-net-pci,netdev=net-a,mac=52:54:00:00:00:01,id=a",
      "-netdev",
      "user,id=net-b,restrict=on",
      "-device",
      "e1000,netdev=net-b,mac=52:54:00:00:00:02,id=b,romfile=",
    ]);
    const mapped = nicArgs("vm", nics, { mapped: { prod: { type: "bridge", bridge: "br-dr" } } });
    expect(mapped.slice(0, 2)).toEqual(["-netdev", "bridge,id=net-a,br=br-dr"]);
    expect(mapped[5]).toBe("user,id=net-b,restrict=on"); // no network in the spec: isolated, never production
    expect(nicArgs("vm", nics, { mapped: { prod: { type: "tap", ifname: "tap7" } } })[1]).toBe("tap,id=net-a,ifname=tap7,script=no,downscript=no");
    expect(() => nicArgs("vm", nics, { mapped: { lab: { type: "user" } } })).toThrow(
      /network "prod".*does not cover \(it maps "lab"\); add "prod" to network\.mapped or launch with network "isolated"/,
    );
  });
});

describe("launchVm", () => {
  let vm: LaunchedVm | undefined;
  afterEach(async () => {
    await vm?.kill();
    vm = undefined;
  });

  it(`runs the counter guest from a spec on a throwaway overlay (accel auto: ${kvmUsable() ? "kvm" : "tcg"}), isolated, stops it, and leaves the base untouched`, async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const base = join(tmp.path, "point.qcow2");
    await makeCounterDisk(base, { initialRecord: { counter: 1000, boots: 4 } });
    const baseHash = sha256(base);
    const overlay = await createThrowawayOverlay(base, join(tmp.path, "test-failover.qcow2"));
    expect(overlay.backing).toBe(base);
    await expect(createThrowawayOverlay(base, overlay.path)).rejects.toThrow(OverlayError);

    vm = await launchVm({ spec: counterSpec, diskImages: { disk0: overlay.path }, runDir: join(tmp.path, "run"), name: "tfo-vm1", network: "isolated" });
    expect(vm.accel).toBe(kvmUsable() ? "kvm" : "tcg");
    expect(vm.runningAt.getTime()).toBeGreaterThanOrEqual(vm.startedAt.getTime());
    expect(vm.serialLogPath).toBe(join(tmp.path, "run", "tfo-vm1.serial.log"));
    expect(existsSync(vm.qmpSocketPath)).toBe(true);
    expect((await vm.qmp.execute<{ status: string }>("query-status")).status).toBe("running");
    const net = await vm.qmp.humanMonitorCommand("info network");
    expect(net).toMatch(/nic0: index=\d+,type=nic,model=e1000,macaddr=52:54:00:12:34:56/);
    expect(net).toMatch(/net-nic0: index=\d+,type=user,.*restrict=on/);

    // Generous: on hosts where /dev/kvm emulates 16/32-bit code (kvm-pvm) SeaBIOS takes 5-30 s under load.
    const first = await waitForCounter(vm.serialLogPath, () => true, 90_000, { proc: vm.proc });
    const bootMs = Date.now() - vm.runningAt.getTime();
    expect(first).toBe(1000); // the point's counter: the replica resumes from its recovery point
    await waitForCounter(vm.serialLogPath, (v) => v >= 1005, 20_000, { proc: vm.proc });

    const stopped = await vm.stop({ timeoutMs: 1_000 });
    expect(stopped.method).toBe("quit"); // a boot sector ignores ACPI powerdown
    expect(stopped.exit.code).toBe(0);
    expect(await vm.stop()).toBe(stopped);
    expect(vm.proc.running).toBe(false);
    expect(vm.qmp.isClosed).toBe(true);

    const printed = readCounters(vm.serialLogPath);
    expect(await readDiskCounter(overlay.path)).toBeGreaterThanOrEqual(printed.at(-1)!);
    expect(sha256(base)).toBe(baseHash);
    expect(await readDiskRecord(base)).toEqual({ counter: 1000, boots: 4 });
    console.info(`launchVm ${vm.accel}: spawn to running ${vm.runningAt.getTime() - vm.startedAt.getTime()} ms, running to first counter line ${bootMs} ms`);
  });

  it("refuses bad launches before starting QEMU; kill() ends a running VM (TCG)", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const runDir = join(tmp.path, "run");
    const disk = join(tmp.path, "d.qcow2");
    await makeCounterDisk(disk);
    const base = { spec: counterSpec, runDir, name: "bad", network: "isolated" as const };
    await expect(launchVm({ ...base, diskImages: {} })).rejects.toThrow(/no image given for disk disk0; pass diskImages/);
    await expect(launchVm({ ...base, diskImages: { disk0: disk, disk9: disk } })).rejects.toThrow(/diskImages has disk9/);
    await expect(launchVm({ ...base, diskImages: { disk0: join(tmp.path, "nope.qcow2") } })).rejects.toThrow(/does not exist/);
    await expect(launchVm({ ...base, diskImages: { disk0: disk }, network: { mapped: {} } })).rejects.toThrow(VmLaunchError);
    await expect(launchVm({ ...base, diskImages: { disk0: disk }, spec: { ...counterSpec, cpus: -1 } })).rejects.toThrow(VmSpecError);
    await expect(launchVm({ ...base, diskImages: { disk0: disk }, runDir: join(tmp.path, "x".repeat(120)) })).rejects.toThrow(/longer than 107 bytes/);
    await expect(launchVm({ ...base, diskImages: { disk0: disk }, spec: { ...counterSpec, machine: "no-such-machine" } })).rejects.toThrow(
      /cannot launch VM 'bad'.*unsupported machine type/s,
    );

    vm = await launchVm({ ...base, name: "killme", diskImages: { disk0: disk }, accel: "tcg" });
    expect(vm.accel).toBe("tcg");
    await waitForCounter(vm.serialLogPath, () => true, 20_000, { proc: vm.proc });
    console.info(`launchVm tcg: spawn to running ${vm.runningAt.getTime() - vm.startedAt.getTime()} ms, running to first counter line ${Date.now() - vm.runningAt.getTime()} ms`);
    const exit = await vm.kill();
    expect(exit.signal).toBe("SIGKILL");
    expect((await vm.stop()).method).toBe("already-exited");
  });
});
