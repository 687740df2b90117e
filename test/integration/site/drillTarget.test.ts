/**
 * A drill's checks against real test VMs launched as a test failover launches them (isolated
 * network, a guest agent channel). The counter guest: the serial pattern passes; the TCP port check
 * reaches the guest through QEMU's forward and sees that nothing answers there (the counter guest
 * has no network stack: the connection stays SYN_SENT, though QEMU accepted it on the host side);
 * the guest agent check finds the channel and no agent behind it. The Linux test guest
 * (guest/linux: qemu-ga, a virtio NIC, httpd on port 80): guestAgent, tcpPort and guestCommand
 * pass, and a failing guest command fails naming its exit status and output.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { makeCounterDisk } from "../../../guest/index.js";
import { linuxGuestArtifacts, makeExt4Disk } from "../../../guest/linux/index.js";
import { createThrowawayOverlay, launchVm, type LaunchedVm, type VmSpec } from "../../../src/site/launcher/index.js";
import { runChecks } from "../../../src/site/drills/checks.js";
import { launchedVmTarget } from "../../../src/site/drills/vmTarget.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const spec: VmSpec = {
  machine: "q35",
  cpus: 1,
  memoryMiB: 64,
  disks: [{ diskId: "disk0", bus: "ide", bootIndex: 0 }],
  nics: [{ id: "nic0", model: "e1000", mac: "52:54:00:12:34:57", network: "prod", pxe: false }],
};

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe("drill checks on a real test VM", { timeout: 120_000 }, () => {
  it("serialPattern passes; tcpPort and guestAgent fail naming what the guest did", async () => {
    const tmp = makeTmpDir("qr-drilltarget-");
    cleanups.push(tmp.cleanup);
    const base = join(tmp.path, "base.qcow2");
    await makeCounterDisk(base, { sizeMiB: 64 });
    const overlay = join(tmp.path, "overlay.qcow2");
    await createThrowawayOverlay(base, overlay);
    const vm: LaunchedVm = await launchVm({
      spec,
      diskImages: { disk0: overlay },
      runDir: join(tmp.path, "run"),
      name: "drill-vm1",
      network: "isolated",
      accel: "tcg",
      dieWithOwner: true,
      guestAgentChannel: true,
    });
    cleanups.push(() => vm.kill());
    expect(vm.guestAgentSocketPath).toBe(join(tmp.path, "run", "drill-vm1.qga"));
    expect(existsSync(vm.guestAgentSocketPath!)).toBe(true);
    const target = launchedVmTarget(vm, () => spec.nics);
    cleanups.push(() => target.close());
    const startedAt = Date.now();

    const booted = await runChecks({ serialPattern: "^QREPLICA-COUNTER \\d+$" }, { target, startedAt, deadline: startedAt + 90_000 });
    expect(booted.failed).toBeUndefined();
    expect(booted.checks.map((c) => c.check)).toEqual(["running", "serialPattern"]);

    const soon = () => ({ target, startedAt, deadline: Date.now() + 3_000 });
    const tcp = await runChecks({ tcpPort: 22 }, soon());
    expect(tcp.failed).toMatchObject({ check: "tcpPort" });
    expect(tcp.failed!.detail).toMatch(/port 22: the guest did not complete the connection within 2000 ms \(SYN_SENT\)/);
    // The forward listens on 127.0.0.1 only, on the VM's own user network.
    expect(await vm.qmp.humanMonitorCommand("info usernet")).toMatch(/TCP\[HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1 \d+\s+10\.0\.2\.15\s+22/);

    const agent = await runChecks({ guestAgent: true }, soon());
    expect(agent.failed).toMatchObject({ check: "guestAgent" });
    expect(agent.failed!.detail).toMatch(/qemu-guest-agent at .*drill-vm1\.qga is unavailable: no answer to guest-sync-delimited/);
  });

  it("guestAgent, tcpPort and guestCommand pass on the Linux guest; a failing command names its status", { timeout: 240_000 }, async () => {
    const tmp = makeTmpDir("qr-drilllinux-");
    cleanups.push(tmp.cleanup);
    const { kernelPath, initrdPath } = await linuxGuestArtifacts();
    const base = join(tmp.path, "base.qcow2");
    await makeExt4Disk(base, 16);
    const overlay = join(tmp.path, "overlay.qcow2");
    await createThrowawayOverlay(base, overlay);
    const linuxSpec: VmSpec = {
      machine: "q35",
      cpus: 1,
      memoryMiB: 256,
      disks: [{ diskId: "vda", bus: "virtio" }],
      nics: [{ id: "nic0", model: "virtio-net-pci", mac: "52:54:00:12:34:58", network: "prod", pxe: false }],
      extraArgs: ["-kernel", kernelPath, "-initrd", initrdPath, "-append", "console=ttyS0 panic=-1", "-no-reboot"],
    };
    const vm = await launchVm({
      spec: linuxSpec,
      diskImages: { vda: overlay },
      runDir: join(tmp.path, "run"),
      name: "drill-linux1",
      network: "isolated",
      accel: "tcg",
      dieWithOwner: true,
      guestAgentChannel: true,
    });
    cleanups.push(() => vm.kill());
    const target = launchedVmTarget(vm, () => linuxSpec.nics);
    cleanups.push(() => target.close());
    const startedAt = Date.now();

    // The guest boots under TCG at its own pace: the checks poll until each passes.
    const checks = { serialPattern: "^QR-READY", guestAgent: true, tcpPort: 80, guestCommand: ["/bin/cat", "/proc/version"] };
    const ok = await runChecks(checks, { target, startedAt, deadline: startedAt + 180_000 });
    expect(ok.failed, JSON.stringify(ok.checks)).toBeUndefined();
    expect(ok.checks.map((c) => [c.check, c.passed])).toEqual([
      ["running", true],
      ["serialPattern", true],
      ["guestAgent", true],
      ["tcpPort", true],
      ["guestCommand", true],
    ]);
    const detail = (name: string) => ok.checks.find((c) => c.check === name)?.detail;
    expect(detail("guestAgent")).toBe("guest-ping answered");
    expect(detail("tcpPort")).toMatch(/^port 80 accepted a connection/);
    expect(detail("guestCommand")).toMatch(/^exit status 0; output: Linux version 6\.\d+/);
    expect(readFileSync(vm.serialLogPath, "utf8")).toMatch(/QR-NET eth0 10\.0\.2\.15 httpd:80/);

    // The same guest refuses a port nothing listens on: the TCP check passed on httpd, not on the stack.
    const closed = await runChecks({ tcpPort: 81 }, { target, startedAt, deadline: Date.now() + 2_000 });
    expect(closed.failed).toMatchObject({ check: "tcpPort", passed: false });
    expect(closed.failed!.detail).toMatch(/port 81: the guest refused the connection \(nothing listens there\)/);

    // A command that fails is retried until the deadline, then names its status and output.
    const failing = await runChecks({ guestCommand: ["/bin/sh", "-c", "echo no such service >&2; exit 3"] }, { target, startedAt, deadline: Date.now() + 3_000 });
    expect(failing.failed).toMatchObject({ check: "guestCommand", passed: false });
    expect(failing.failed!.detail).toMatch(/\["\/bin\/sh","-c","echo no such service >&2; exit 3"\] exited with status 3; output: no such service/);
    expect(failing.checks.filter((c) => c.passed).map((c) => c.check)).toEqual(["running", "guestAgent"]);
  });
});
