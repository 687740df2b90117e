/**
 * libvirt-managed VMs. One private libvirtd serves the whole file (libvirtd as root keeps its
 * QEMU driver state in /run/libvirt/qemu: one such daemon at a time).
 *
 * Capture: the libvirt capture on a real libvirtd (private, started by the test) and a TCG domain running
 * the counter guest on a qcow2 disk, with writes injected through the guest's disk device:
 * an initial read and incremental cycles rebuild the point-in-time export byte for byte (and,
 * with the domain held paused from a cut-off to a clean stop, the disk itself); undefine + define
 * loses libvirt's checkpoints and the capture redefines them and goes on incrementally; kill -9 of
 * QEMU is reported as resync required. libvirtd not starting fails the test with the reason.
 *
 * Launcher: a replica site initialised with `--launcher libvirt` runs test and failover VMs as
 * domains of the same private libvirtd (the counter guest proves which point each one booted).
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import { addressFile } from "../../src/site/siteConfig.js";
import { logTail } from "../helpers/crashGuest.js";
import { AGENT, cliJson, startDaemon, waitFor } from "../helpers/processes.js";
import { call, controlClientAs, refusal } from "../helpers/controlPlane.js";
import { readCounters, readDiskCounter, waitForCounter } from "../../guest/index.js";
import { ledgerEvents } from "../helpers/resyncChecks.js";
import { setupTwoSites, type TwoSites } from "../helpers/twoSites.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LibvirtCapture } from "../../replica-agent/capture/libvirt/libvirtCapture.js";
import { type CaptureCycle, ScratchSpaceLowError, SnapshotBrokenError } from "../../replica-agent/capture/index.js";
import { compareImages } from "../../src/qemu/processes/index.js";
import { applyExtentsToRaw } from "../helpers/applyExtents.js";
import { PrivateLibvirt, type LibvirtTestDomain } from "../helpers/libvirt.js";
import { makeTmpDir } from "../helpers/tmpDir.js";
import { mountTmpfs } from "../helpers/guestIo.js";

const MiB = 1024 * 1024;
let lv: PrivateLibvirt | undefined;
let dom: LibvirtTestDomain;
let dir: string;
let cleanup: (() => void) | undefined;

let scratchTmpfs: string;
let unmountScratch: (() => void) | undefined;

beforeAll(async () => {
  const tmp = makeTmpDir("qr-libvirt-");
  dir = tmp.path;
  cleanup = tmp.cleanup;
  // Mounted before libvirtd starts: it runs in a private mount namespace (a copy of ours made as it
  // starts), and QEMU in one of its own, so a later mount would not reach them.
  scratchTmpfs = join(dir, "scratch-tmpfs");
  mkdirSync(scratchTmpfs);
  unmountScratch = mountTmpfs(scratchTmpfs, 16);
  lv = await PrivateLibvirt.start(join(dir, "libvirt"));
  dom = await lv.defineCounterDomain(`qr-cap-${process.pid}`, join(dir, "disks"));
  await dom.start();
}, 120_000);

let env: TwoSites | undefined;
let launcherEnv: TwoSites | undefined;
afterAll(async () => {
  await env?.stopAll();
  await launcherEnv?.stopAll();
  lv?.stop();
  unmountScratch?.();
  if (!process.env.QR_KEEP) cleanup?.();
});

const open = () => LibvirtCapture.open({ vmId: "vm1", domain: dom.name, uri: lv!.uri, stateDir: join(dir, "agent-state") });
const replica = () => join(dir, "replica.raw");

/**
 * Copies the cycle's point-in-time export as the oracle, injects writes while the cycle is read
 * (they must not show), applies the cycle to the replica and checks it against the oracle.
 */
async function shipAndCheck(capture: LibvirtCapture, cycle: CaptureCycle, n: number, opts: { writeDuringRead?: boolean } = {}): Promise<void> {
  const oracle = join(dir, `oracle-${n}.raw`);
  const socket = join(capture.scratchDir, "vm1.backup.sock");
  execFileSync("nbdcopy", [`nbd+unix:///hda?socket=${socket}`, oracle]);
  if (opts.writeDuringRead !== false) await dom.write(`write -P 0x${(0x40 + n).toString(16)} ${(2 + n) * MiB} 256k`);
  for (const d of cycle.disks) await applyExtentsToRaw(replica(), d.sizeAtCutoff, d.extents());
  await cycle.confirm();
  const cmp = await compareImages(replica(), oracle, { formatA: "raw", formatB: "raw" });
  expect(cmp.identical, `cycle ${n}: ${cmp.detail}`).toBe(true);
}

describe("libvirt capture (checkpoints + pull-mode backup over NBD)", () => {
  it("initial read and 3 incremental cycles rebuild each cut-off; undefine + define keeps cycles incremental", async () => {
    let capture = await open();
    expect(capture.report?.status).toBe("not-enabled");
    expect(capture.domainDisks.map((d) => d.target)).toEqual(["hda"]);
    expect(capture.report?.disks.map((d) => d.sizeBytes)).toEqual([64 * MiB]);
    await dom.write(`write -P 0x11 ${8 * MiB} 1M`);
    const initial = await capture.enable();
    expect(initial.kind).toBe("full");
    await shipAndCheck(capture, initial, 0);
    for (let n = 1; n <= 3; n++) {
      await dom.write(`write -P 0x${(0x20 + n).toString(16)} ${(10 + n) * MiB} 128k`);
      const c = await capture.beginCycle();
      expect(c.kind).toBe("incremental");
      // Only what changed since the last checkpoint (the writes and the guest's counter), not the disk.
      expect(c.disks[0]!.dirtyBytes).toBeLessThan(4 * MiB);
      await shipAndCheck(capture, c, n);
      expect(c.disks[0]!.stats.dataBytes).toBeLessThan(4 * MiB);
    }

    // Paused from the cut-off to a clean stop: the replica must equal the disk file itself.
    await lv!.virsh.run(["suspend", dom.name]);
    const last = await capture.beginCycle();
    await shipAndCheck(capture, last, 4, { writeDuringRead: false });
    await dom.stopGracefully();
    const disk = await compareImages(replica(), dom.diskPath, { formatA: "raw", formatB: "qcow2" });
    expect(disk.identical, disk.detail).toBe(true);

    // libvirt forgets checkpoints with the domain's definition; the bitmap stays in the qcow2.
    await lv!.virsh.run(["undefine", dom.name, "--checkpoints-metadata"]);
    await dom.define();
    expect((await lv!.virsh.run(["checkpoint-list", dom.name, "--name"])).trim()).toBe("");
    await dom.start();
    capture = await open();
    expect(capture.report?.status).toBe("ok");
    expect((await lv!.virsh.run(["checkpoint-list", dom.name, "--name"])).trim()).toBe("qreplica-5");
    await dom.write(`write -P 0x77 ${20 * MiB} 64k`);
    const after = await capture.beginCycle();
    expect(after.kind).toBe("incremental");
    expect(after.disks[0]!.dirtyBytes).toBeLessThan(4 * MiB);
    await shipAndCheck(capture, after, 6);
  }, 240_000);

  it("kill -9 of the domain's QEMU: the capture reports resync required, then a full export is read", async () => {
    await dom.crash();
    await dom.start();
    const capture = await open();
    expect(capture.report?.status).toBe("resync-required");
    expect(capture.report?.disks[0]?.reason).toMatch(/inconsistent or missing/);
    const resync = await capture.enable();
    expect(resync.kind).toBe("full");
    await shipAndCheck(capture, resync, 7);
    await dom.write(`write -P 0x78 ${21 * MiB} 64k`);
    const next = await capture.beginCycle();
    expect(next.kind).toBe("incremental");
    await shipAndCheck(capture, next, 8);
  }, 240_000);

  it("a guest rewriting 256 MiB while the backup job's scratch sits on a 16 MiB tmpfs: every guest write succeeds, the job is stopped and the cycle fails as SNAPSHOT_BROKEN; a nearly full scratch takes no cut-off; with room back the next cycle reads byte-identical", async () => {
    // libvirt 9.0's pull backup is QEMU's blockdev-backup sync=none, whose copy-before-write fails
    // the guest's write when the scratch is full: the agent watches the scratch and ends the job first.
    const d = await lv!.defineCounterDomain(`qr-scratch-${process.pid}`, join(dir, "scratch-disks"), 288);
    const scratchDir = scratchTmpfs;
    await d.start();
    const capture = await LibvirtCapture.open({ vmId: "vm2", domain: d.name, uri: lv!.uri, stateDir: join(dir, "agent-state-2"), scratchDir });
    // Data the copy-before-write must save (old zeroes would cost the scratch no room).
    // The counter guest's boot sector and counter live in the first MiB: the test's data starts at 16 MiB.
    const at = (i: number) => 16 * MiB + i * MiB;
    for (let i = 0; i < 16; i++) await d.write(`write -P 0x11 ${at(i * 16)} 16M`);
    const cycle = await capture.enable();
    // 1 MiB guest writes (a disk request's size, not a whole rewrite at once), 256 MiB in all.
    const pattern = (i: number) => 0x20 + (i % 0x50);
    for (let i = 0; i < 256; i++) await d.write(`write -P 0x${pattern(i).toString(16)} ${at(i)} 1M`);
    for (let i = 0; i < 256; i++) await d.write(`read -P 0x${pattern(i).toString(16)} ${at(i)} 1M`);
    expect(await d.state()).toBe("running");
    const read = (async () => {
      for (const disk of cycle.disks) for await (const _ of disk.extents());
    })();
    const err = await read.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SnapshotBrokenError);
    expect((err as SnapshotBrokenError).message).toContain(scratchDir);
    await cycle.abort(err);

    // Nearly full: no cut-off at all (nothing of the guest's writes is at stake).
    const free = statfsSync(scratchDir).bavail * statfsSync(scratchDir).bsize;
    writeFileSync(join(scratchDir, "filler"), Buffer.alloc(free - 4 * MiB, 1));
    await expect(capture.enable()).rejects.toBeInstanceOf(ScratchSpaceLowError);
    rmSync(join(scratchDir, "filler"));

    // Room back, the guest held still: the next cycle is the disk, byte for byte.
    await lv!.virsh.run(["suspend", d.name]);
    const next = await capture.enable();
    const raw = join(dir, "replica-2.raw");
    for (const disk of next.disks) await applyExtentsToRaw(raw, disk.sizeAtCutoff, disk.extents());
    await next.confirm();
    await d.stopGracefully();
    const cmp = await compareImages(raw, d.diskPath, { formatA: "raw", formatB: "qcow2" });
    expect(cmp.identical, cmp.detail).toBe(true);
  }, 300_000);
});

interface Commit {
  cycleSeq: number;
  kind: string;
  dataBytes: number;
  zeroBytes: number;
}

async function commits(t: TwoSites): Promise<Commit[]> {
  return (await ledgerEvents(t.siteB)).filter((e) => e.type === "CycleCommitted").map((e) => e.data as unknown as Commit);
}

describe("the agent on a libvirt domain (replication to a site)", () => {
  it("replicates incrementally, redefines checkpoints after undefine + define, resyncs by comparison after kill -9; the point boots on the replica site", async () => {
    env = await setupTwoSites(join(dir, "sites"), { diskBytes: 1 * MiB, intervalSeconds: 2 });
    const t = env;
    const d = await lv!.defineCounterDomain(`qr-agent-${process.pid}`, join(dir, "agent-disks"));
    await d.start();
    await t.startSite(t.siteB);
    const config = join(t.dir, "libvirt-agent.yaml");
    writeFileSync(
      config,
      toYaml({
        siteId: "site-a",
        stateDir: join(t.dir, "libvirt-agent-state"),
        tls: { caFile: join(t.caDir, "ca.crt"), certFile: join(t.dir, "agent-tls", "agent-a.crt"), keyFile: join(t.dir, "agent-tls", "agent-a.key") },
        vms: [
          {
            id: "vm1",
            libvirt: { domain: d.name, uri: lv!.uri },
            replicaSite: readFileSync(addressFile(t.siteB), "utf8").trim(),
            replicaSiteId: "site-b",
            intervalSeconds: 2,
            // No spec: the agent derives it from the domain's XML.
          },
        ],
      }),
    );
    const log = join(t.dir, "libvirt-agent.log");
    t.daemons.push(startDaemon(AGENT, ["--config", config], log));
    const diag = () => `\n--- agent ---\n${logTail(log)}\n--- site-b ---\n${logTail(join(t.siteB, "site.log"))}`;
    const until = <T>(what: string, probe: () => Promise<T | undefined>, ms = 120_000) =>
      waitFor(what, probe, ms, 250).catch((e: Error) => {
        throw new Error(e.message + diag());
      });
    const committedAfter = async (seq: number, kind?: string) => (await commits(t)).find((c) => c.cycleSeq > seq && (kind === undefined || c.kind === kind));

    // Initial replication, then 3 incremental cycles with writes injected while the guest runs.
    await until("the initial point", () => committedAfter(0));
    for (let n = 1; n <= 3; n++) {
      await d.write(`write -P 0x${(0x30 + n).toString(16)} ${(4 + n) * MiB} 192k`);
      const last = (await t.relationship()).lastCycleSeq;
      await until(`incremental cycle ${n}`, () => committedAfter(last, "incremental"));
    }
    expect((await t.relationship()).vmSpec).toEqual({
      machine: expect.stringMatching(/^pc-i440fx-/),
      cpus: 1,
      memoryMiB: 64,
      disks: [{ diskId: "hda", bus: "ide", bootIndex: 0 }],
      nics: [],
      extraArgs: [],
    });
    const incrementals = (await commits(t)).filter((c) => c.kind === "incremental");
    expect(incrementals.length).toBeGreaterThanOrEqual(3);
    for (const c of incrementals) expect(c.dataBytes).toBeLessThan(4 * MiB);

    /** Pauses the guest, waits for a point cut after that, stops QEMU cleanly: the point must equal the disk. */
    const pointEqualsDisk = async (label: string) => {
      await lv!.virsh.run(["suspend", d.name]);
      const pausedAt = Date.now();
      // A cycle cut before the pause may still be committed after it: only a later cut-off counts.
      const point = await until(`a point cut after the pause (${label})`, async () => (await t.relationship()).points.find((p) => Date.parse(p.cutoffAt) > pausedAt));
      await d.stopGracefully();
      const cmp = await compareImages(point.disks[0]!.imagePath, d.diskPath, { formatA: "qcow2", formatB: "qcow2" });
      expect(cmp.identical, `${label}: ${cmp.detail}`).toBe(true);
    };
    await pointEqualsDisk("after 3 cycles");

    // undefine + define: libvirt forgot the checkpoint; the agent redefines it and stays incremental.
    await lv!.virsh.run(["undefine", d.name, "--checkpoints-metadata"]);
    await d.define();
    const beforeRedefine = (await t.relationship()).lastCycleSeq;
    await d.start();
    await d.write(`write -P 0x51 ${9 * MiB} 64k`);
    const redefined = await until("an incremental cycle after undefine + define", () => committedAfter(beforeRedefine));
    expect(redefined.kind).toBe("incremental");
    expect(readFileSync(log, "utf8")).toMatch(/redefined it from the saved XML/);

    // kill -9 of QEMU; the domain restarted paused, so its disk holds still for the comparison.
    await d.write(`write -P 0x52 ${10 * MiB} 64k`);
    await d.crash();
    const beforeCrash = (await t.relationship()).lastCycleSeq;
    await lv!.virsh.run(["start", d.name, "--paused"]);
    const resync = await until("the resync point", () => committedAfter(beforeCrash, "resync"), 180_000);
    expect(resync.dataBytes + resync.zeroBytes).toBeLessThan(16 * MiB);
    const point = (await t.relationship()).points.find((p) => p.cycleSeq === resync.cycleSeq)!;
    await d.stopGracefully();
    const cmp = await compareImages(point.disks[0]!.imagePath, d.diskPath, { formatA: "qcow2", formatB: "qcow2" });
    expect(cmp.identical, `resync point: ${cmp.detail}`).toBe(true);
    const types = (await ledgerEvents(t.siteB)).map((e) => e.type);
    expect(types).toContain("ResyncRequired");

    // The spec derived from the domain and the replicated disk boot on the replica site (its
    // qemu-system launcher here; the libvirt launcher is tested below): the test VM prints the counter the point holds.
    const test = await cliJson<{ recoveryPointId: string; vm: { serialLog: string } }>(["failover", "vm1", "--test", "--dir", t.siteB]);
    const tested = (await t.relationship()).points.find((p) => p.pointId === test.recoveryPointId)!;
    await waitForCounter(test.vm.serialLog, () => true, 90_000);
    expect(readCounters(test.vm.serialLog)[0]).toBe(await readDiskCounter(tested.disks[0]!.imagePath));
    await cliJson(["test-failover", "stop", "vm1", "--dir", t.siteB]);
  }, 420_000);
});

interface Launched {
  recoveryPointId: string;
  testId?: string;
  vm: { serialLog: string; launcher: string; libvirtDomain: string; libvirtUri: string; pid: number };
}

describe("failover and test VMs as libvirt domains (site init --launcher libvirt)", () => {
  it("a test failover runs and stops a transient domain; a site restart destroys a stray one; an unplanned failover boots the counter guest's point as a persistent domain, adopted across a restart", async () => {
    launcherEnv = await setupTwoSites(join(dir, "launcher-sites"), {
      diskBytes: 8 * MiB,
      intervalSeconds: 1,
      counterGuest: true,
      siteBInitArgs: ["--launcher", "libvirt", "--libvirt-uri", lv!.uri],
    });
    const t = launcherEnv;
    const siteJson = JSON.parse(readFileSync(join(t.siteB, "site.json"), "utf8")) as { launcher: string; libvirtUri: string };
    expect(siteJson).toMatchObject({ launcher: "libvirt", libvirtUri: lv!.uri });
    const guest = t.guest!;
    let site = await t.startSite(t.siteB);
    await waitForCounter(guest.serialLogPath, (v) => v > 3, 90_000);
    const agent = t.startAgent();
    const siteLog = join(t.siteB, "site.log");
    const diag = () => `\n--- site-b ---\n${logTail(siteLog)}\n--- agent ---\n${logTail(join(t.dir, "agent.log"))}`;
    const until = <T>(what: string, probe: () => Promise<T | undefined>, ms = 90_000) =>
      waitFor(what, probe, ms, 200).catch((e: Error) => {
        throw new Error(e.message + diag());
      });
    const domains = async (all = false) =>
      (await lv!.virsh.run(["list", "--name", ...(all ? ["--all"] : [])]))
        .split("\n")
        .map((l) => l.trim())
        .filter(Boolean);
    const counterOf = async (pointId: string) => readDiskCounter((await t.relationship()).points.find((p) => p.pointId === pointId)!.disks[0]!.imagePath);
    await until("two recovery points on B", async () => ((await t.relationship()).points.length >= 2 ? true : undefined));

    // A test failover: a transient domain of the site, booted from the point; stopped, it is gone.
    const test = await cliJson<Launched>(["failover", "vm1", "--test", "--dir", t.siteB]);
    expect(test.vm).toMatchObject({ launcher: "libvirt", libvirtDomain: `qreplica-site-b-test-vm1-${test.testId}`, libvirtUri: lv!.uri });
    expect(await domains()).toContain(test.vm.libvirtDomain);
    // The spec has no NIC: no host network at all (NICs get restrict=on, libvirtDomainXml.test.ts).
    expect(await lv!.virsh.run(["dumpxml", test.vm.libvirtDomain])).not.toMatch(/<interface|-netdev/);
    await waitForCounter(test.vm.serialLog, () => true, 90_000);
    expect(readCounters(test.vm.serialLog)[0]).toBe(await counterOf(test.recoveryPointId));
    await cliJson(["test-failover", "stop", "vm1", "--dir", t.siteB]);
    expect(await domains(true)).not.toContain(test.vm.libvirtDomain);

    // A site killed while a test VM runs: its next start destroys the stray domain and closes the test.
    const stray = await cliJson<Launched>(["failover", "vm1", "--test", "--dir", t.siteB]);
    expect(await domains()).toContain(stray.vm.libvirtDomain);
    await site.kill("SIGKILL");
    site = await t.startSite(t.siteB);
    expect(await domains(true)).not.toContain(stray.vm.libvirtDomain);
    expect(Object.keys((await t.relationship()).testFailovers)).toEqual([]);

    // Disaster: the primary's agent is gone; the failover VM is a persistent domain on the latest point.
    await agent.kill("SIGKILL");
    const fo = await cliJson<Launched>(["failover", "vm1", "--unplanned", "--dir", t.siteB]);
    expect(fo.vm).toMatchObject({ launcher: "libvirt", libvirtDomain: "qreplica-site-b-vm1" });
    expect(await domains()).toContain("qreplica-site-b-vm1");
    expect((await lv!.virsh.run(["dominfo", "qreplica-site-b-vm1"])).replace(/\s+/g, " ")).toMatch(/Persistent: yes/);
    await waitForCounter(fo.vm.serialLog, () => true, 90_000);
    expect(readCounters(fo.vm.serialLog)[0]).toBe(await counterOf(fo.recoveryPointId));

    // Production outlives the site: a restarted site adopts the same domain (same QEMU), then cancel removes it.
    const pidBefore = fo.vm.pid;
    expect(pidBefore).toBeGreaterThan(1);
    await site.kill("SIGKILL");
    await t.startSite(t.siteB);
    await until("the failover domain adopted", async () => (/failover VM adopted/.test(readFileSync(siteLog, "utf8")) ? true : undefined));
    expect(Number(readFileSync(`/run/libvirt/qemu/qreplica-site-b-vm1.pid`, "utf8").trim())).toBe(pidBefore);
    expect((await lv!.virsh.run(["domstate", "qreplica-site-b-vm1"])).trim()).toBe("running");
    // Reverse replication reads a VM through its QEMU monitor, which libvirt owns: refused, recording nothing.
    const client = controlClientAs(readFileSync(addressFile(t.siteB), "utf8").trim(), t.admin(t.siteB));
    const refused = await refusal(call(client, client.startReverseReplication, { vmId: "vm1", replicaAddress: "127.0.0.1:9" }));
    client.close();
    expect(refused.details).toMatch(/libvirt domain qreplica-site-b-vm1.*not supported yet/);
    expect((await t.relationship()).state).toBe("failed-over-waiting-completion");
    await cliJson(["failover", "vm1", "cancel", "--dir", t.siteB]);
    expect(await domains(true)).not.toContain("qreplica-site-b-vm1");
  }, 300_000);
});
