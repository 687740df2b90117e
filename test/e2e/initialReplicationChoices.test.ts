/**
 * Initial replication without the network carrying the disks, against real processes (a
 * qemu-storage-daemon primary, the agent, site B over mutual TLS):
 * - by media: the agent exports the initial cut-off to a directory, `qreplica import` makes it the
 *   first point (the ledger records 0 data bytes and 0 wire bytes for it), and the next cycle is an
 *   incremental one carrying exactly the writes made since the export's cut-off;
 * - by seed: an old copy of the disk that differs by ~1% is registered with `qreplica seed`; the
 *   first cycle compares and sends only the differing chunks.
 * Both commands need the operator role: a viewer is refused.
 */
import { cpSync, existsSync, readdirSync, writeFileSync, openSync, readFileSync, statSync, writeSync, closeSync } from "node:fs";
import { dirname, join } from "node:path";
import { randomBytes } from "node:crypto";
import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { compareImages, convertImage } from "../../src/qemu/processes/index.js";
import { addressFile, loadSiteConfig } from "../../src/site/siteConfig.js";
import { call, controlClientAs, issueRole, refusal } from "../helpers/controlPlane.js";
import { runCli, waitFor } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";
import { logTail, startGuestAgent, type AgentVm } from "../helpers/crashGuest.js";
import { ledgerEvents } from "../helpers/resyncChecks.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const DISK = 64 * MiB;
const setup = twoSitesPerTest();

interface Commit {
  cycleSeq: number;
  kind: string;
  dataBytes: number;
  wireBytes: number;
  comparedBytes?: number;
  importedBytes?: number;
}

const storageVm = (t: TwoSites): AgentVm => ({ qmpSocketPath: t.vm.qmpSocketPath, nbdSocketPath: t.vm.nbdSocketPath, disks: [{ id: "vda", node: "node-vda" }] });
const diag = (t: TwoSites) => () => `\n--- agent ---\n${logTail(join(t.dir, "crash-agent.log"))}\n--- site-b ---\n${logTail(join(t.siteB, "site.log"))}`;
const mode = (path: string) => statSync(path).mode & 0o777;

async function commits(t: TwoSites): Promise<Commit[]> {
  return (await ledgerEvents(t.siteB)).filter((e) => e.type === "CycleCommitted").map((e) => e.data as unknown as Commit);
}

/** `qreplica status vm1 --json` on site B: the relationship as an operator sees it. */
async function waitingFor(t: TwoSites): Promise<{ state: string; initialReplicationWait: string }> {
  const r = await cliJson<{ relationships: Array<{ state: string; initialReplicationWait: string }> }>(["status", "vm1", "--dir", t.siteB]);
  expect(r.code).toBe(0);
  return r.body.relationships[0]!;
}

async function cliJson<T>(args: string[]): Promise<{ code: number; body: T }> {
  const r = await runCli([...args, "--json"]);
  return { code: r.code, body: JSON.parse(r.stdout || r.stderr) as T };
}

describe("initial replication choices", () => {
  it("export to a directory, import at the replica: no disk data over gRPC, the import point is the cut-off, the next incremental carries exactly the later writes", async () => {
    const t = await setup("qr-export-", { diskBytes: DISK, intervalSeconds: 1 });
    const why = diag(t);
    await t.startSite(t.siteB);
    await t.vm.guestWrite("vda", ["write -P 0x11 0 8M", "write -P 0x22 20M 4M"]);
    const exportDir = join(t.dir, "media", "vm1");
    const exporting = { intervalSeconds: 1, vmExtra: { initialReplication: { export: exportDir } } };
    const agent = startGuestAgent(t, storageVm(t), exporting);
    const manifestPath = join(exportDir, "manifest.json");
    await waitFor("the export's manifest", () => (existsSync(manifestPath) ? true : undefined), 60_000).catch((e: Error) => {
      throw new Error(e.message + why());
    });
    // No write since the export's cut-off: the disk as it is now is the cut-off's content.
    const atCutoff = join(t.dir, "at-cutoff.raw");
    await convertImage(t.vm.guestUri("vda"), atCutoff, { srcFormat: "raw", dstFormat: "raw" });
    const manifest = JSON.parse(readFileSync(manifestPath, "utf8")) as { cycleSeq: number; disks: Array<{ diskId: string; file: string; sizeBytes: number }> };
    expect(manifest.disks).toEqual([expect.objectContaining({ diskId: "vda", file: "vda.raw", sizeBytes: DISK })]);
    expect((await compareImages(join(exportDir, "vda.raw"), atCutoff, { formatA: "raw", formatB: "raw" })).identical).toBe(true);
    expect([mode(exportDir), mode(manifestPath), mode(join(exportDir, "vda.raw"))]).toEqual([0o700, 0o600, 0o600]);
    await waitFor("the agent waiting for the import", () => (readFileSync(join(t.dir, "crash-agent.log"), "utf8").includes("waiting for its import") ? true : undefined), 30_000);
    expect((await waitingFor(t)).initialReplicationWait).toMatch(/waiting for 'qreplica import vm1 --from DIR'/);
    // Writes after the cut-off: the agent's bitmap keeps them for the first incremental cycle.
    await t.vm.guestWrite("vda", ["write -P 0x33 30M 2M", "write -z 4M 1M"]);
    // An agent restart while the media travels: it waits for the import again, without a new export,
    // and its change tracking since the cut-off survives (the writes above arrive after the import).
    const exportedAt = readFileSync(manifestPath, "utf8");
    await agent.kill("SIGTERM");
    startGuestAgent(t, storageVm(t), exporting);
    const waits = () => readFileSync(join(t.dir, "crash-agent.log"), "utf8").split("waiting for its import").length - 1;
    await waitFor("the restarted agent waiting for the import", () => (waits() >= 2 ? true : undefined), 60_000).catch((e: Error) => {
      throw new Error(e.message + why());
    });
    expect(readFileSync(manifestPath, "utf8")).toBe(exportedAt);

    // Nothing was sent meanwhile: the site has the relationship and no cycle.
    expect(await commits(t)).toEqual([]);
    expect((await t.relationship()).state).toBe("ready-for-initial-replication");

    // A corrupted copy of the export is refused, naming the image and the checksum; nothing is recorded.
    const corrupt = join(t.dir, "corrupt-copy");
    cpSync(exportDir, corrupt, { recursive: true });
    const fd = openSync(join(corrupt, "vda.raw"), "r+");
    writeSync(fd, Buffer.from([0x99]), 0, 1, 5 * MiB);
    closeSync(fd);
    const bad = await cliJson<{ error: { code: string; message: string } }>(["import", "vm1", "--dir", t.siteB, "--from", corrupt]);
    expect(bad.code).not.toBe(0);
    expect(bad.body.error.message).toMatch(/vda\.raw.*SHA-256.*corrupt/);
    expect(await commits(t)).toEqual([]);

    // The media, carried to the replica's host (a copy of the directory), imported there.
    const carried = join(t.dir, "carried");
    cpSync(exportDir, carried, { recursive: true });
    const imported = await cliJson<{ state: string; recoveryPointId: string; cycleSequence: number; localBytes: number }>(["import", "vm1", "--dir", t.siteB, "--from", carried]);
    expect(imported.code, JSON.stringify(imported.body) + why()).toBe(0);
    expect(imported.body).toMatchObject({ state: "replicating", cycleSequence: manifest.cycleSeq, localBytes: DISK });

    // The ledger: the initial point took no data and no wire bytes; its content is the cut-off.
    const [initial] = await commits(t);
    expect(initial).toMatchObject({ cycleSeq: manifest.cycleSeq, kind: "full", dataBytes: 0, wireBytes: 0, importedBytes: DISK });
    const state = await t.relationship();
    const importPoint = state.points.find((p) => p.cycleSeq === manifest.cycleSeq)!;
    expect((await compareImages(importPoint.disks[0]!.imagePath, atCutoff, { formatA: "qcow2", formatB: "raw" })).identical).toBe(true);
    expect(mode(importPoint.disks[0]!.imagePath)).toBe(0o600);

    // The first incremental cycle: the writes since the cut-off (2 MiB of data, 1 MiB of zeroes), byte-exact.
    const next = await waitFor("the first incremental cycle after the import", async () => (await commits(t)).find((c) => c.cycleSeq === manifest.cycleSeq + 1), 60_000).catch(
      (e: Error) => {
        throw new Error(e.message + why());
      },
    );
    expect(next.kind).toBe("incremental");
    expect(next.dataBytes).toBeGreaterThanOrEqual(2 * MiB);
    expect(next.dataBytes).toBeLessThanOrEqual(3 * MiB);
    const after = await t.relationship();
    const nextPoint = after.points.find((p) => p.cycleSeq === next.cycleSeq)!;
    expect((await compareImages(nextPoint.disks[0]!.imagePath, t.vm.guestUri("vda"), { formatA: "qcow2", formatB: "raw" })).identical).toBe(true);
    // The import wrote the point's chunk hash index, so the points after it keep one (a resync compares without reading the chain).
    expect(readdirSync(dirname(nextPoint.disks[0]!.imagePath)).filter((f) => f.endsWith(".chunks")).length).toBeGreaterThanOrEqual(1);
  }, 120_000);

  it("seed from an old copy differing by ~1%: the agent waits for it, only the differing chunks travel, the point equals the primary; viewers may not seed or import", async () => {
    const t = await setup("qr-seed-", { diskBytes: DISK, intervalSeconds: 1 });
    const why = diag(t);
    await t.startSite(t.siteB);
    // Random data, so that what travels is not shrunk by compression: wire bytes measure the differences too.
    const random = join(t.dir, "random.bin");
    writeFileSync(random, randomBytes(DISK));
    await t.vm.guestWrite("vda", [`write -s ${random} 0 64M`]);
    // The old copy (a restored backup, say), then ten regions inside ten 64 KiB chunks change on the primary: 640 KiB of chunks, ~0.98% of the disk.
    const seed = join(t.dir, "restored-vda.qcow2");
    await convertImage(t.vm.guestUri("vda"), seed, { srcFormat: "raw", dstFormat: "qcow2" });
    await t.vm.guestWrite(
      "vda",
      Array.from({ length: 10 }, (_, i) => `write -s ${random} ${(3 + i * 6) * MiB + 4 * KiB} 60k`),
    );
    startGuestAgent(t, storageVm(t), { intervalSeconds: 1, vmExtra: { initialReplication: "seed" } });
    await waitFor("the agent waiting for a seed", () => (readFileSync(join(t.dir, "crash-agent.log"), "utf8").includes("waits for a seed") ? true : undefined), 30_000).catch(
      (e: Error) => {
        throw new Error(e.message + why());
      },
    );
    expect(await waitingFor(t)).toMatchObject({ state: "ready-for-initial-replication", initialReplicationWait: "waiting for 'qreplica seed vm1 --disk DISK=IMAGE'" });

    // Roles: a viewer is refused both commands; an operator passes the role check (and import is
    // refused for want of an export, not of a role).
    const address = readFileSync(addressFile(t.siteB), "utf8").trim();
    const people = join(t.dir, "people");
    const viewer = controlClientAs(address, await issueRole(t.caDir, "vera-viewer", "viewer", people));
    const operator = controlClientAs(address, await issueRole(t.caDir, "otto-operator", "operator", people));
    try {
      const denied = await refusal(call(viewer, viewer.seedInitialReplication, { vmId: "vm1", seeds: [{ diskId: "vda", imagePath: seed }] }));
      expect(status[denied.code]).toBe("PERMISSION_DENIED");
      expect(denied.details).toContain("operator");
      const denied2 = await refusal(call(viewer, viewer.importInitialReplication, { vmId: "vm1", exportDir: join(t.dir, "nothing") }));
      expect(status[denied2.code]).toBe("PERMISSION_DENIED");
      const noExport = await refusal(call(operator, operator.importInitialReplication, { vmId: "vm1", exportDir: join(t.dir, "nothing") }));
      expect(status[noExport.code]).toBe("FAILED_PRECONDITION");
      expect(noExport.details).toContain("manifest.json");
      const r = await call(operator, operator.seedInitialReplication, { vmId: "vm1", seeds: [{ diskId: "vda", imagePath: seed }] });
      expect(r).toMatchObject({ agentNotified: true, localBytes: BigInt(DISK) });
    } finally {
      viewer.close();
      operator.close();
    }
    const seedCopy = join(loadSiteConfig(t.siteB).storageRoot, "vm1", "vda", "seed.img");
    const first = await waitFor("the seeded first point", async () => (await commits(t))[0], 60_000).catch((e: Error) => {
      throw new Error(e.message + why());
    });
    // Only the differing chunks crossed the network: ~1% of the disk (640 KiB here), at most 1.5%.
    expect(first.comparedBytes).toBe(DISK);
    expect(first.dataBytes).toBeGreaterThanOrEqual(640 * KiB);
    expect(first.dataBytes).toBeLessThanOrEqual(0.015 * DISK);
    expect(first.wireBytes).toBeGreaterThanOrEqual(600 * KiB);
    expect(first.wireBytes).toBeLessThanOrEqual(0.015 * DISK);
    const state = await t.relationship();
    const point = state.points.find((p) => p.cycleSeq === first.cycleSeq)!;
    expect((await compareImages(point.disks[0]!.imagePath, t.vm.guestUri("vda"), { formatA: "qcow2", formatB: "raw" })).identical).toBe(true);
    // The operator's original is not part of the chain: a copy in the VM's storage is, ours alone.
    expect(mode(seedCopy)).toBe(0o600);
    expect(JSON.parse(readFileSync(join(loadSiteConfig(t.siteB).storageRoot, "vm1", "seeds.json"), "utf8"))).toEqual([{ diskId: "vda", imagePath: seedCopy }]);
    // Recorded with its operator in a hash-chained stream of the ledger, which still verifies.
    const listed = await cliJson<{ events: Array<{ stream: string; type: string; actor: string }> }>(["events", "--dir", t.siteB, "--all"]);
    expect(listed.body.events).toContainEqual(expect.objectContaining({ stream: "initial-replication-vm1", type: "SeedRegistered", actor: "otto-operator" }));
    expect((await runCli(["ledger", "verify", "--dir", t.siteB])).code).toBe(0);
  }, 120_000);

  it("at a scheduled time: the initial copy waits for it (status says so), then runs over the network by itself", async () => {
    const t = await setup("qr-at-", { diskBytes: 16 * MiB, intervalSeconds: 1 });
    const why = diag(t);
    await t.startSite(t.siteB);
    await t.vm.guestWrite("vda", ["write -P 0x51 0 2M"]);
    // Far ahead first: whatever the machine's speed, status is asked while the agent waits.
    const later = new Date(Date.now() + 3_600_000);
    const agent = startGuestAgent(t, storageVm(t), { intervalSeconds: 1, vmExtra: { initialReplication: { at: later.toISOString() } } });
    const waiting = await waitFor(
      "status naming the scheduled time",
      async () => {
        const w = await waitingFor(t).catch(() => undefined);
        return w?.initialReplicationWait ? w : undefined;
      },
      60_000,
    );
    expect(waiting).toMatchObject({ state: "ready-for-initial-replication", initialReplicationWait: `scheduled for ${later.toISOString()} (agent config)` });
    expect(readFileSync(join(t.dir, "crash-agent.log"), "utf8")).toContain("initial replication scheduled by the VM's config: waiting");
    expect(await commits(t)).toEqual([]);
    // Rescheduled a few seconds ahead (a config change takes a restart): the agent starts the copy itself at that time.
    await agent.kill("SIGTERM");
    const at = new Date(Date.now() + 4_000);
    startGuestAgent(t, storageVm(t), { intervalSeconds: 1, vmExtra: { initialReplication: { at: at.toISOString() } } });
    const first = await waitFor("the initial point", async () => (await commits(t))[0], 60_000).catch((e: Error) => {
      throw new Error(e.message + why());
    });
    expect(first.kind).toBe("full");
    const started = (await ledgerEvents(t.siteB)).find((e) => e.type === "InitialReplicationStarted")!;
    expect(new Date((started.data as { cutoffAt: string }).cutoffAt).getTime()).toBeGreaterThanOrEqual(at.getTime());
    const point = (await t.relationship()).points[0]!;
    expect((await compareImages(point.disks[0]!.imagePath, t.vm.guestUri("vda"), { formatA: "qcow2", formatB: "raw" })).identical).toBe(true);
  }, 90_000);
});
