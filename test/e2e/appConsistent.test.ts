/**
 * Application-consistent points against a real Linux guest (guest/linux/: Debian's kernel under
 * TCG, an ext4 data disk the guest keeps writing to, the real qemu-ga on virtio-serial) and a real
 * agent and site. A relay between the agent and qemu-ga (QgaProbe) asks the guest itself,
 * through guest-fsfreeze-status, whether it is frozen right after the agent's freeze and thawed
 * right after its thaw, and snapshots the primary while it is frozen.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it, onTestFinished } from "vitest";
import { PREFIX } from "../../replica-agent/capture/naming.js";
import { compareImages, convertImage, runTool } from "../../src/qemu/processes/index.js";
import { startGuestAgent } from "../helpers/crashGuest.js";
import { LinuxGuest } from "../helpers/linuxGuest.js";
import { cliJson, waitFor, type Daemon } from "../helpers/processes.js";
import { QgaProbe } from "../helpers/qgaProbe.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const FREEZE_BOUND_MS = 3000;
const setup = twoSitesPerTest();

interface LogLine {
  msg: string;
  level: number;
  frozenMs?: number;
  err?: unknown;
}

const agentLog = (t: TwoSites): LogLine[] =>
  readFileSync(join(t.dir, "crash-agent.log"), "utf8")
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as LogLine);

/** What the filesystem in a point looks like to e2fsprogs, read from a raw copy of the point. */
async function ext4OfPoint(t: TwoSites, imagePath: string, name: string): Promise<{ needsRecovery: boolean; fsckClean: boolean; counter: number; raw: string }> {
  const raw = join(t.dir, `${name}.raw`);
  await convertImage(imagePath, raw, { srcFormat: "qcow2", dstFormat: "raw" });
  const header = (await runTool("dumpe2fs", ["-h", raw])).stdout;
  const features = /Filesystem features:\s*(.*)/.exec(header)?.[1] ?? "";
  const fsck = await runTool("e2fsck", ["-fn", raw], { allowExit: [0, 1, 4, 8] });
  const counter = Number((await runTool("debugfs", ["-R", "cat /counter", raw])).stdout.trim());
  return { needsRecovery: features.includes("needs_recovery"), fsckClean: fsck.code === 0, counter, raw };
}

describe("application-consistent points through a real qemu-ga", () => {
  it("freezes the guest for less than the bound and tags the point, whose filesystem is clean and identical to the primary's while frozen; crash points in between", async () => {
    const t = await setup("qr-appcons-", { diskBytes: 4 * MiB, intervalSeconds: 3600 });
    await t.startSite(t.siteB);
    const g = await LinuxGuest.create(join(t.dir, "linux"), 64);
    onTestFinished(() => g.stop());
    const policy = join(t.dir, "appcons.yaml");
    writeFileSync(policy, `name: appcons\nfrequency: 2s\napplicationConsistent: { every: 1h, freezeTimeout: ${FREEZE_BOUND_MS / 1000}s }\n`);
    await cliJson(["policy", "apply", policy, "--dir", t.siteB]);

    let snapshots = 0;
    const probe = await QgaProbe.start({
      listenPath: join(t.dir, "qga-relay.sock"),
      upstreamPath: g.qgaSocketPath,
      // The guest cannot write while frozen: this copy is the primary at the cut-off to come.
      whileFrozen: async () => {
        snapshots++;
        await convertImage(g.diskPath, join(t.dir, `frozen-${snapshots}.raw`), { srcFormat: "qcow2", dstFormat: "raw" });
      },
    });
    onTestFinished(() => probe.close());
    const agentVm = { qmpSocketPath: g.qmpSocketPath, nbdSocketPath: g.nbdSocketPath, disks: [{ id: "vda", node: "vda" }] };
    startGuestAgent(t, agentVm, { intervalSeconds: 2, vmExtra: { guestAgentSocket: probe.listenPath, policy: "appcons" } });

    const first = await waitFor("the initial point", async () => (await t.relationship()).points[0], 120_000);
    expect(first.consistency).toBe("application");
    expect(probe.freezes).toHaveLength(1);
    const freeze = probe.freezes[0]!;
    expect(freeze.statusWhileFrozen).toBe("frozen");
    expect(freeze.filesystems).toBeGreaterThanOrEqual(1);
    expect(freeze.statusAfterThaw).toBe("thawed");
    // From the agent learning of the freeze to the guest's thaw reply (the probe's own pause for
    // the snapshot came before).
    expect(freeze.thawedAt! - freeze.frozenForwardedAt).toBeLessThan(FREEZE_BOUND_MS);
    const frozenLines = agentLog(t).filter((l) => l.msg === "guest filesystems were frozen");
    expect(frozenLines).toHaveLength(1);
    expect(frozenLines[0]!.frozenMs).toBeLessThan(FREEZE_BOUND_MS);

    const cmp = await compareImages(first.disks[0]!.imagePath, join(t.dir, "frozen-1.raw"), { formatA: "qcow2", formatB: "raw" });
    expect(cmp.identical, cmp.detail).toBe(true);
    const appFs = await ext4OfPoint(t, first.disks[0]!.imagePath, "point-app");
    // ext4's freeze flushes its journal and clears needs_recovery: nothing to replay at failover.
    expect(appFs).toMatchObject({ needsRecovery: false, fsckClean: true });
    expect(appFs.counter).toBeGreaterThan(0);

    // The next points (within the hour) are crash-consistent: a mounted ext4 with a journal to replay.
    const crashPoint = await waitFor("a crash-consistent point", async () => (await t.relationship()).points.find((p) => p.cycleSeq > first.cycleSeq), 60_000);
    expect(crashPoint.consistency).toBe("crash");
    expect(probe.freezes).toHaveLength(1);
    const crashFs = await ext4OfPoint(t, crashPoint.disks[0]!.imagePath, "point-crash");
    expect(crashFs.needsRecovery).toBe(true);
    expect(crashFs.counter).toBeGreaterThanOrEqual(appFs.counter);
  }, 300_000);
});
