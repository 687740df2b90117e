/**
 * The encryption signal (issue 13): a guest that overwrites its compressible data with random
 * bytes (what encrypting ransomware does) makes the next point suspect; a guest writing logs does
 * not; a disk random from the start does not. `failover --point last-clean` boots the counter guest
 * from the point before the first suspect one. Real processes: two sites, the agent, the counter
 * guest under TCG (writes through its disk device, tracked like guest writes), the CLI.
 */
import { randomBytes } from "node:crypto";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { readCounters, readDiskCounter, waitForCounter } from "../../guest/index.js";
import { getSqliteEventStore, relationshipStream } from "../../src/ledger/index.js";
import { convertImage } from "../../src/qemu/processes/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { CrashGuest, guestDisks, logTail, startGuestAgent } from "../helpers/crashGuest.js";
import { cliJson, runCli, waitFor } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const setup = twoSitesPerTest();
let guest: CrashGuest | undefined;
afterEach(async () => {
  await guest?.crash();
  guest = undefined;
});

/** Log lines: what a guest appending to its logs writes (zstd keeps a few percent of it). */
function logText(bytes: number, from: number): Buffer {
  const lines: string[] = [];
  let size = 0;
  for (let i = from; size < bytes; i++) {
    const line = `2026-12-05T03:${String(i % 60).padStart(2, "0")}:17.${String(i % 1000).padStart(3, "0")}Z web1 nginx[812]: 10.0.${i % 255}.${(i * 7) % 255} "GET /api/v1/orders/${i} HTTP/1.1" 200 ${512 + (i % 4096)}\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(lines.join("")).subarray(0, bytes);
}

type WirePoint = { recoveryPointId: string; sequence: number; suspectDisks: Array<{ diskId: string; share: number; baselineShare: number }>; lastClean: boolean };
type Compression = Record<string, { incompressibleBytes: number; wireBytes: number }>;

async function ledgerEvents(t: TwoSites): Promise<Array<{ type: string; data: unknown }>> {
  const store = getSqliteEventStore({ path: join(t.siteB, "ledger.sqlite"), create: false });
  try {
    return (await store.readStream(relationshipStream("vm1"))).map((e) => ({ type: e.type, data: e.data }));
  } finally {
    await store.close();
  }
}

async function committedCycles(t: TwoSites): Promise<Array<{ cycleSeq: number; diskDataBytes?: Record<string, number>; diskCompression?: Compression }>> {
  return (await ledgerEvents(t))
    .filter((e) => e.type === "CycleCommitted")
    .map((e) => e.data as { cycleSeq: number; diskDataBytes?: Record<string, number>; diskCompression?: Compression });
}

/** Writes, then waits for a point cut after the write ended (the cycle after the one that may have been open). */
async function writeAndCommit(t: TwoSites, write: () => Promise<void>): Promise<void> {
  const before = (await t.relationship()).lastCycleSeq;
  await write();
  await waitFor("a point after the write", async () => ((await t.relationship()).points.some((p) => p.cycleSeq >= before + 2) ? true : undefined), 90_000);
}

describe("the encryption signal", { timeout: 420_000 }, () => {
  it("logs stay clean, random bytes over the logs make the point suspect, and failover --point last-clean boots the point before it", async () => {
    const t = await setup("qr-ransom-", { diskBytes: 8 * MiB, intervalSeconds: 1 });
    guest = await CrashGuest.create(join(t.dir, "guest"), 64);
    const g = guest;
    const TEXT_AT = 16 * MiB;
    const text = logText(8 * MiB, 0);
    const textFile = join(t.dir, "logs.txt");
    writeFileSync(textFile, text);
    await g.write(`write -s ${textFile} ${TEXT_AT} ${text.length}`);
    await t.startSite(t.siteB);
    const agent = startGuestAgent(t, guestDisks(g), {
      intervalSeconds: 1,
      vmExtra: { spec: { machine: "q35", cpus: 1, memoryMiB: 64, disks: [{ diskId: "vda", bus: "ide", bootIndex: 0 }], nics: [] } },
    });
    const diag = () => `\n--- agent ---\n${logTail(join(t.dir, "crash-agent.log"))}\n--- site-b ---\n${logTail(join(t.siteB, "site.log"))}`;
    await waitFor("the first point", async () => ((await t.relationship()).points.length >= 1 ? true : undefined), 120_000).catch((e: Error) => {
      throw new Error(e.message + diag());
    });

    // --- a guest writing logs: four cycles of appended log lines, none suspect ---
    let logAt = TEXT_AT + text.length;
    for (let round = 1; round <= 4; round++) {
      const chunk = logText(3 * MiB, round * 100_000);
      const file = join(t.dir, `log-${round}.txt`);
      writeFileSync(file, chunk);
      await writeAndCommit(t, () => g.write(`write -s ${file} ${logAt} ${chunk.length}`));
      logAt += chunk.length;
    }
    const logged = await t.relationship();
    expect(logged.suspectPoints).toEqual([]);
    expect(logged.encryptionBaselines.vda!.points).toBeGreaterThanOrEqual(3);
    expect(logged.encryptionBaselines.vda!.share).toBeLessThan(0.05);
    // Every cycle recorded the signal: a log cycle's bytes compressed.
    const logCycles = (await committedCycles(t)).filter((c) => (c.diskDataBytes?.vda ?? 0) >= MiB);
    expect(logCycles.length).toBeGreaterThanOrEqual(4);
    for (const c of logCycles) {
      expect(c.diskCompression!.vda!.incompressibleBytes).toBeLessThan(c.diskDataBytes!.vda! * 0.05);
      expect(c.diskCompression!.vda!.wireBytes).toBeLessThan(c.diskDataBytes!.vda! / 2);
    }
    const cleanCounter = (await t.relationship()).points.at(-1)!;

    // --- the "ransomware": the log region overwritten with random bytes ---
    const random = randomBytes(8 * MiB);
    const randomFile = join(t.dir, "random.bin");
    writeFileSync(randomFile, random);
    await g.write(`write -s ${randomFile} ${TEXT_AT} ${random.length}`);
    const suspect = await waitFor("a suspect point", async () => (await t.relationship()).suspectPoints[0], 90_000).catch((e: Error) => {
      throw new Error(e.message + diag());
    });
    expect(suspect.cycleSeq).toBeGreaterThan(cleanCounter.cycleSeq);
    expect(suspect.disks[0]).toMatchObject({ diskId: "vda" });
    expect(suspect.disks[0]!.share).toBeGreaterThan(0.6);

    // points shows it (table and JSON), health warns with its code, the ledger has the event.
    const points = await cliJson<WirePoint[]>(["points", "vm1", "--dir", t.siteB]);
    const flagged = points.find((p) => p.recoveryPointId === suspect.pointId)!;
    expect(flagged.suspectDisks[0]).toMatchObject({ diskId: "vda" });
    const lastClean = points.filter((p) => p.lastClean);
    expect(lastClean.length).toBe(1);
    expect(lastClean[0]!.sequence).toBeLessThan(suspect.cycleSeq);
    expect(points.filter((p) => p.sequence > lastClean[0]!.sequence && p.sequence < suspect.cycleSeq).every((p) => p.suspectDisks.length === 0)).toBe(true);
    expect((await runCli(["points", "vm1", "--dir", t.siteB])).stdout).toMatch(new RegExp(`${suspect.pointId} .*SUSPECT vda \\d+%>\\d+%`));
    const status = await cliJson<{ relationships: Array<{ health: string; healthReasons: Array<{ code: string; level: string; message: string }> }> }>([
      "status",
      "vm1",
      "--dir",
      t.siteB,
    ]);
    const reason = status.relationships[0]!.healthReasons.find((r) => r.code === "POINT_SUSPECT");
    expect(reason?.level).toBe("warning");
    expect(reason?.message).toContain(`last clean point is ${lastClean[0]!.recoveryPointId}`);
    expect(status.relationships[0]!.health).toBe("warning");
    expect((await ledgerEvents(t)).map((e) => e.type)).toContain("RecoveryPointSuspected");
    // The health monitor records the raised level (stream health-vm1): its latest change is away
    // from normal (another warning may have raised it first, e.g. a late point on a loaded machine).
    await waitFor(
      "the raised health level in the ledger",
      async () => {
        const store = getSqliteEventStore({ path: join(t.siteB, "ledger.sqlite"), create: false });
        try {
          const last = (await store.readStream("health-vm1")).at(-1);
          return last && last.data.to !== "normal" ? true : undefined;
        } finally {
          await store.close();
        }
      },
      60_000,
    );

    // --- failover to the last clean point: the counter guest boots from it, its logs intact ---
    const cleanPoint = (await t.relationship()).points.find((p) => p.pointId === lastClean[0]!.recoveryPointId)!;
    const cleanImage = cleanPoint.disks[0]!.imagePath;
    const raw = join(t.dir, "clean.raw");
    await convertImage(cleanImage, raw, { dstFormat: "raw" });
    expect(
      readFileSync(raw)
        .subarray(TEXT_AT, TEXT_AT + text.length)
        .equals(text),
    ).toBe(true);
    rmSync(raw);
    const counter = await readDiskCounter(cleanImage);
    await agent.kill("SIGKILL");
    const fo = await cliJson<{ recoveryPointId: string; vm: { serialLog: string } }>(["failover", "vm1", "--unplanned", "--point", "last-clean", "--dir", t.siteB]);
    expect(fo.recoveryPointId).toBe(lastClean[0]!.recoveryPointId);
    await waitForCounter(fo.vm.serialLog, () => true, 90_000);
    expect(readCounters(fo.vm.serialLog)[0]).toBe(counter);

    // --- clearing the suspicion: an operator may, a viewer and the agent may not ---
    const address = readFileSync(addressFile(t.siteB), "utf8").trim();
    const as = (dir: string, name: string) => ["--site", address, "--ca", join(t.caDir, "ca.crt"), "--cert", join(dir, `${name}.crt`), "--key", join(dir, `${name}.key`)];
    for (const [name, role] of [
      ["vic", "viewer"],
      ["olga", "operator"],
    ] as const) {
      await cliJson(["pki", "issue", "--ca-dir", t.caDir, "--name", name, "--role", role, "--out-dir", join(t.dir, name)]);
    }
    for (const who of [as(join(t.dir, "vic"), "vic"), as(join(t.dir, "agent-tls"), "agent-a")]) {
      const refused = await runCli(["points", "vm1", "clear-suspect", ...who, "--json"]);
      expect(refused.code).not.toBe(0);
      expect(refused.stdout).toMatch(/PERMISSION_DENIED|needs role operator/);
    }
    expect((await t.relationship()).suspectPoints.length).toBeGreaterThan(0);
    const cleared = await cliJson<{ clearedRecoveryPointIds: string[] }>(["points", "clear-suspect", "vm1", ...as(join(t.dir, "olga"), "olga")]);
    expect(cleared.clearedRecoveryPointIds).toContain(suspect.pointId);
    expect((await t.relationship()).suspectPoints).toEqual([]);
    const after = await cliJson<WirePoint[]>(["points", "vm1", "--dir", t.siteB]);
    expect(after.every((p) => p.suspectDisks.length === 0 && !p.lastClean)).toBe(true);
  });

  it("a disk random from the start never flags", async () => {
    const t = await setup("qr-ransom-rnd-", { diskBytes: 48 * MiB, intervalSeconds: 1 });
    const file = join(t.dir, "random.bin");
    writeFileSync(file, randomBytes(16 * MiB));
    await t.vm.guestWrite("vda", [`write -s ${file} 0 ${16 * MiB}`]);
    await t.startSite(t.siteB);
    t.startAgent();
    await waitFor("the first point", async () => ((await t.relationship()).points.length >= 1 ? true : undefined), 120_000);
    for (let round = 1; round <= 4; round++) {
      const chunk = join(t.dir, `random-${round}.bin`);
      writeFileSync(chunk, randomBytes(4 * MiB));
      await writeAndCommit(t, () => t.vm.guestWrite("vda", [`write -s ${chunk} ${16 * MiB + round * 4 * MiB} ${4 * MiB}`]));
    }
    const s = await t.relationship();
    expect(s.encryptionBaselines.vda!.share).toBeGreaterThan(0.95);
    expect(s.encryptionBaselines.vda!.points).toBeGreaterThanOrEqual(4);
    expect(s.suspectPoints).toEqual([]);
    const cycles = (await committedCycles(t)).filter((c) => (c.diskDataBytes?.vda ?? 0) >= MiB);
    expect(cycles.length).toBeGreaterThanOrEqual(5); // the initial copy and the four rounds
    for (const c of cycles) expect(c.diskCompression!.vda!.incompressibleBytes).toBe(c.diskDataBytes!.vda);
  });
});
