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

interface Status {
  relationships: Array<{ healthReasons: Array<{ code: string; message: string }> }>;
}

/** Sites, the booted Linux guest, a policy asking for an application-consistent point every hour, the relay. */
async function linuxGuestUnderPolicy(prefix: string, whileFrozen?: (g: LinuxGuest) => Promise<void>): Promise<{ t: TwoSites; g: LinuxGuest; probe: QgaProbe }> {
  const t = await setup(prefix, { diskBytes: 4 * MiB, intervalSeconds: 3600 });
  await t.startSite(t.siteB);
  const g = await LinuxGuest.create(join(t.dir, "linux"), 64);
  onTestFinished(() => g.stop());
  const policy = join(t.dir, "appcons.yaml");
  writeFileSync(policy, `name: appcons\nfrequency: 2s\napplicationConsistent: { every: 1h, freezeTimeout: ${FREEZE_BOUND_MS / 1000}s }\n`);
  await cliJson(["policy", "apply", policy, "--dir", t.siteB]);
  const probe = await QgaProbe.start({ listenPath: join(t.dir, "qga-relay.sock"), upstreamPath: g.qgaSocketPath, whileFrozen: whileFrozen && (() => whileFrozen(g)) });
  onTestFinished(() => probe.close());
  return { t, g, probe };
}

function startAgent(t: TwoSites, g: LinuxGuest, probe: QgaProbe): Daemon {
  const agentVm = { qmpSocketPath: g.qmpSocketPath, nbdSocketPath: g.nbdSocketPath, disks: [{ id: "vda", node: "vda" }] };
  return startGuestAgent(t, agentVm, { intervalSeconds: 2, vmExtra: { guestAgentSocket: probe.listenPath, policy: "appcons" } });
}

const healthCodes = async (t: TwoSites): Promise<string[]> => (await cliJson<Status>(["status", "vm1", "--dir", t.siteB])).relationships[0]!.healthReasons.map((r) => r.code);

describe("application-consistent points through a real qemu-ga", () => {
  it("freezes the guest for less than the bound and tags the point, whose filesystem is clean and identical to the primary's while frozen; crash points in between", async () => {
    let snapshots = 0;
    // The guest cannot write while frozen: this copy is the primary at the cut-off to come.
    const { t, g, probe } = await linuxGuestUnderPolicy("qr-appcons-", async (guest) => {
      snapshots++;
      await convertImage(guest.diskPath, join(guest.dir, `frozen-${snapshots}.raw`), { srcFormat: "qcow2", dstFormat: "raw" });
    });
    startAgent(t, g, probe);

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

    const cmp = await compareImages(first.disks[0]!.imagePath, join(g.dir, "frozen-1.raw"), { formatA: "qcow2", formatB: "raw" });
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

  it("a qemu-ga that does not answer gives a crash-consistent point and a Warning; once it answers, the next cut-off freezes", async () => {
    const { t, g, probe } = await linuxGuestUnderPolicy("qr-appcons-hung-");
    // A hung guest agent: the channel is open (QEMU answers the socket), nobody reads it.
    expect((await g.shell("kill -STOP $(pidof qemu-ga)")).status).toBe(0);
    startAgent(t, g, probe);
    const first = await waitFor("the initial point", async () => (await t.relationship()).points[0], 120_000);
    expect(first.consistency).toBe("crash");
    expect(probe.freezes).toHaveLength(0);
    expect(agentLog(t).some((l) => l.msg === "guest freeze failed: the recovery point will be crash-consistent")).toBe(true);
    expect(await healthCodes(t)).toContain("APP_CONSISTENT_FAILED");
    const rel = await t.relationship();
    expect(rel.quiesceFailure).toMatchObject({ cycleSeq: first.cycleSeq });

    expect((await g.shell("kill -CONT $(pidof qemu-ga)")).status).toBe(0);
    const app = await waitFor("an application-consistent point", async () => (await t.relationship()).points.find((p) => p.consistency === "application"), 60_000);
    expect(app.cycleSeq).toBeGreaterThan(first.cycleSeq);
    expect(probe.freezes[0]).toMatchObject({ statusWhileFrozen: "frozen", statusAfterThaw: "thawed" });
    expect(await healthCodes(t)).not.toContain("APP_CONSISTENT_FAILED");
    expect((await t.relationship()).quiesceFailure).toBeUndefined();
  }, 300_000);

  it("the guest is thawed also when the cut-off fails while it is frozen, and its writes go on", async () => {
    let sabotaged: string | undefined;
    let pointsAtSabotage: string[] = [];
    // While frozen, before the agent's transaction: a bitmap with the name the transaction is about
    // to create makes it fail inside the freeze.
    const { t, g, probe } = await linuxGuestUnderPolicy("qr-appcons-fail-", async (guest) => {
      if (sabotaged || !armed) return;
      const blocks = await guest.execute<Array<{ inserted?: { "node-name": string; "dirty-bitmaps"?: Array<{ name: string }> } }>>("query-block");
      const names = blocks.flatMap((b) => (b.inserted?.["node-name"] === "vda" ? (b.inserted["dirty-bitmaps"] ?? []) : [])).map((b) => b.name);
      const seqs = names.map((n) => Number(n.slice(PREFIX.length + 1))).filter((n) => Number.isInteger(n) && n >= 0);
      if (seqs.length === 0) throw new Error(`no recording bitmap of the agent on vda: ${JSON.stringify(names)}`);
      sabotaged = `${PREFIX}-${Math.max(...seqs) + 1}`;
      await guest.execute("block-dirty-bitmap-add", { node: "vda", name: sabotaged });
      pointsAtSabotage = (await t.relationship()).points.map((p) => p.pointId);
    });
    let armed = false;
    startAgent(t, g, probe);
    const first = await waitFor("the initial point", async () => (await t.relationship()).points[0], 120_000);
    expect(first.consistency).toBe("application");
    // The next freeze is due in an hour: a restarted agent freezes at its first cut-off.
    armed = true;
    const counterBefore = await g.counter();
    await t.daemons.at(-1)!.kill("SIGTERM");
    startAgent(t, g, probe);
    // The agent reports the cut-off that failed inside the freeze (QEMU refuses the existing bitmap).
    await waitFor("the sabotaged cut-off to fail", () => (sabotaged && readFileSync(join(t.dir, "crash-agent.log"), "utf8").includes(sabotaged) ? true : undefined), 60_000);
    const sabotagedFreeze = await waitFor(
      "the guest's word after the failed cut-off's thaw",
      () => probe.freezes.find((f, i) => i >= 1 && f.statusAfterThaw !== undefined),
      30_000,
    );
    expect(sabotagedFreeze).toMatchObject({ statusWhileFrozen: "frozen", statusAfterThaw: "thawed" });
    // The guest's application writes again.
    await waitFor("the guest's counter to advance after the thaw", async () => ((await g.counter()) > counterBefore + 5 ? true : undefined), 30_000);

    await g.execute("block-dirty-bitmap-remove", { node: "vda", name: sabotaged! });
    const next = await waitFor(
      "an application-consistent point once the bitmap is gone",
      async () => (await t.relationship()).points.find((p) => !pointsAtSabotage.includes(p.pointId) && p.consistency === "application"),
      60_000,
    );
    expect(next.consistency).toBe("application");
  }, 300_000);
});
