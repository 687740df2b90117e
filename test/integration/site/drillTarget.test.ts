/**
 * A drill's checks against a real test VM (the counter guest launched as a test failover launches
 * it: isolated network, a guest agent channel): the serial pattern passes; the TCP port check
 * reaches the guest through QEMU's forward and sees that nothing answers there (the counter guest
 * has no network stack: the connection stays SYN_SENT, though QEMU accepted it on the host side);
 * the guest agent check finds the channel and no agent behind it. The passing side of the agent
 * and TCP checks needs a guest with an OS (unit-tested on the logic: test/unit/site/drills).
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { makeCounterDisk } from "../../../guest/index.js";
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
});
