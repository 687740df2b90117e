/**
 * Issue 11, deliverable 2: resynchronisation between B and C while B forwards points (extended
 * replication A -> B -> C). C's operator asks for a resync (`qreplica resync VM --dir C`), once
 * while B's forwarder is connected (told over the open stream) and once while B is down (told at
 * B's next Hello, after B's restart). Each time B sends its newest point as a resync cycle: C's
 * newest point's chunk hashes against B's, only the differing chunks travel. Checked: the resync
 * point at C is B's point byte for byte, the bytes sent far below the disk's size (C's ledger),
 * C's older points untouched (SHA-256 before/after), and forwarding goes on incrementally
 * (the next point at C is B's byte for byte). Writes at A go on throughout.
 */
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { compareImages } from "../../src/qemu/processes/index.js";
import type { ForwardedPoint } from "../../src/site/extension/extensionLedger.js";
import { cliJson as qreplica, waitFor } from "../helpers/processes.js";
import { forwardedOn, relationshipEvents, sha256File, threeSitesPerTest, waitForForwarded } from "../helpers/threeSites.js";
import type { TwoSites } from "../helpers/twoSites.js";

const newThreeSites = threeSitesPerTest();
const MiB = 1024 * 1024;
const DISK_BYTES = 32 * MiB;

/** The points B forwarded to C, as B's ledger records them. */
const forwardedPoints = async (siteDir: string) => (await forwardedOn(siteDir)).forwarded;
/** Hellos site C accepted from B's forwarder (its log). */
const helloCount = (siteDir: string) =>
  readFileSync(join(siteDir, "site.log"), "utf8")
    .split("\n")
    .filter((l) => l.includes('"msg":"Hello accepted"') && l.includes('"identity":"site-b"')).length;

/**
 * B's ledger without the VM's extension stream (as if restored from before it, or rebuilt): only
 * by going around the append-only triggers, which is what this test stands in for. Site stopped.
 */
function forgetForwarding(siteDir: string): void {
  const db = new Database(join(siteDir, "ledger.sqlite"));
  try {
    db.exec(`DROP TRIGGER events_no_delete;
      DELETE FROM events WHERE stream_id = 'extension-vm1';
      DELETE FROM snapshots WHERE key LIKE '%extension-vm1%';
      CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'qreplica ledger events are append-only'); END;`);
  } finally {
    db.close();
  }
}

/** B's point and the point it became at C, byte for byte (and the same cut-off). */
async function expectSamePoint(t: TwoSites, f: ForwardedPoint, what: string): Promise<void> {
  const b = (await t.relationship("vm1", t.siteB)).points.find((p) => p.pointId === f.pointId);
  const c = (await t.relationship("vm1", t.siteC)).points.find((p) => p.pointId === f.targetPointId);
  expect(b, `${what}: B's point ${f.pointId}`).toBeDefined();
  expect(c, `${what}: C's point ${f.targetPointId}`).toBeDefined();
  expect(c!.cutoffAt).toBe(b!.cutoffAt);
  const cmp = await compareImages(b!.disks[0]!.imagePath, c!.disks[0]!.imagePath, { formatA: "qcow2", formatB: "qcow2" });
  expect(cmp.identical, `${what}: ${f.pointId} vs ${f.targetPointId}: ${cmp.detail}`).toBe(true);
}

/** C's ledger: the resync's byte counts (compared: the whole disk; sent: what differed). */
async function expectResyncBytes(
  C: string,
  f: ForwardedPoint,
  minDataBytes: number,
  maxDataBytes: number,
): Promise<{ dataBytes: number; wireBytes: number; comparedBytes: number }> {
  const committed = (await relationshipEvents(C)).find((e) => e.type === "CycleCommitted" && Number(e.data.cycleSeq) === f.targetSeq);
  expect(committed?.data.kind).toBe("resync");
  const sent = committed!.data as { dataBytes: number; wireBytes: number; comparedBytes: number };
  expect(sent.comparedBytes).toBe(DISK_BYTES);
  expect(sent.dataBytes).toBeGreaterThanOrEqual(minDataBytes);
  expect(sent.dataBytes).toBeLessThanOrEqual(maxDataBytes);
  expect(sent.wireBytes).toBeLessThan(maxDataBytes);
  // B records the same counts as forwarded.
  expect(f).toMatchObject({ kind: "resync", dataBytes: sent.dataBytes, comparedBytes: DISK_BYTES });
  return sent;
}

describe("extended replication: resync between B and C", { timeout: 240_000 }, () => {
  it("C's operator asks for one (B connected; B down), B forgets what it forwarded: only differing chunks travel, C's points kept, forwarding goes on", async () => {
    const chain = await newThreeSites("qr-extresync-", {
      diskBytes: DISK_BYTES,
      intervalSeconds: 1,
      siteCMaxPoints: 100,
      firstWrites: ["write -P 0x10 0 4M", "write -P 0x11 20M 1M"],
    });
    const { t, C } = chain;
    let siteB = chain.siteB;
    await qreplica(["extend", "vm1", "--dir", t.siteB, "--to-dir", C]);
    await t.vm.guestWrite("vda", ["write -P 0x12 8M 512k"]);
    await waitForForwarded(t.siteB, 2, 60_000);

    // B holds back its next points (a long interval), so its newest differs from C's by the writes
    // since. The forwarder starts a new stream: C holds it once C accepted its Hello.
    const hellos = helloCount(C);
    await qreplica(["extend", "vm1", "--dir", t.siteB, "--to-dir", C, "--interval", "600"]);
    await waitFor("B's forwarder's new stream at C", () => (helloCount(C) > hellos ? true : undefined), 30_000);
    const pointAfterWrite = async () => {
      const wroteAt = Date.now();
      await waitFor("a point on B cut after the write", async () => ((await t.relationship()).points.some((p) => Date.parse(p.cutoffAt) > wroteAt) ? true : undefined), 60_000);
    };

    // --- the operator at C asks for a resync while B's forwarder is connected ---
    const before = await t.relationship("vm1", C);
    const hashes = new Map(before.points.map((p) => [p.pointId, sha256File(p.disks[0]!.imagePath)]));
    await t.vm.guestWrite("vda", ["write -P 0x21 2M 256k"]);
    await pointAfterWrite();
    const asked = await qreplica<{ state: string; agentNotified: boolean }>(["resync", "vm1", "--dir", C]);
    expect(asked).toMatchObject({ state: "resync-required", agentNotified: true });
    const first = await waitFor("B forwards a resync", async () => (await forwardedPoints(t.siteB)).find((f) => f.kind === "resync"), 60_000);
    await t.vm.guestWrite("vda", ["write -P 0x22 12M 128k"]);
    await expectSamePoint(t, first, "resync (B connected)");
    // The writes since C's newest point (B's 1 s cycles carry a few more clusters each): far below the 32 MiB disk.
    const sent1 = await expectResyncBytes(C, first, 256 * 1024, 2 * MiB);
    for (const [pointId, hash] of hashes) {
      const p = (await t.relationship("vm1", C)).points.find((x) => x.pointId === pointId);
      expect(sha256File(p!.disks[0]!.imagePath), `C's point ${pointId} after the resync`).toBe(hash);
    }
    // Forwarding goes on incrementally on the resync point (each point as it commits again).
    await qreplica(["extend", "vm1", "--dir", t.siteB, "--to-dir", C, "--interval", "0"]);
    const next1 = await waitFor("an incremental after the resync", async () => (await forwardedPoints(t.siteB)).find((f) => f.targetSeq > first.targetSeq), 60_000);
    expect(next1.kind).toBe("incremental");
    await expectSamePoint(t, next1, "incremental after the resync");

    // --- the operator asks again while B is down: B's next Hello is answered with the resync ---
    await qreplica(["extend", "vm1", "--dir", t.siteB, "--to-dir", C, "--interval", "600"]);
    await t.vm.guestWrite("vda", ["write -P 0x31 16M 64k"]);
    await pointAfterWrite();
    await siteB.kill("SIGTERM");
    await waitFor("C sees B's stream end", async () => ((await qreplica<{ agentConnected: boolean }>(["measure", "vm1", "--dir", C])).agentConnected ? undefined : true), 30_000);
    // B's chunk hash indexes are gone too (torn or deleted files): B then reads its point to hash it.
    const bDisk = join(t.siteB, "storage", "vm1", "vda");
    const indexFiles = readdirSync(bDisk).filter((f) => f.endsWith(".chunks"));
    expect(indexFiles.length).toBeGreaterThan(0);
    for (const f of indexFiles) rmSync(join(bDisk, f));
    const asked2 = await qreplica<{ state: string; agentNotified: boolean }>(["resync", "vm1", "--dir", C]);
    expect(asked2).toMatchObject({ state: "resync-required", agentNotified: false });
    const kept = await t.relationship("vm1", C);
    const hashes2 = new Map(kept.points.map((p) => [p.pointId, sha256File(p.disks[0]!.imagePath)]));
    siteB = await t.startSite(t.siteB);
    const second = await waitFor(
      "B forwards a resync after its restart",
      async () => (await forwardedPoints(t.siteB)).find((f) => f.kind === "resync" && f.targetSeq > next1.targetSeq),
      60_000,
    );
    await t.vm.guestWrite("vda", ["write -P 0x32 24M 64k"]);
    await expectSamePoint(t, second, "resync (at B's Hello)");
    const sent2 = await expectResyncBytes(C, second, 64 * 1024, 2 * MiB);
    // Where B's side of the comparison came from: its index the first time, a read of its point the second.
    const resyncLogs = readFileSync(join(t.siteB, "site.log"), "utf8")
      .split("\n")
      .filter((l) => l.includes("as a resync by comparison"))
      .map((l) => JSON.parse(l) as { ownHashes: Record<string, string>; targetPoint: string; hashMs: number; ms: number });
    expect(resyncLogs.find((l) => l.targetPoint === first.targetPointId)?.ownHashes).toEqual({ vda: "index" });
    expect(resyncLogs.find((l) => l.targetPoint === second.targetPointId)?.ownHashes).toEqual({ vda: "read" });
    for (const [pointId, hash] of hashes2) {
      const p = (await t.relationship("vm1", C)).points.find((x) => x.pointId === pointId);
      expect(sha256File(p!.disks[0]!.imagePath), `C's point ${pointId} after the second resync`).toBe(hash);
    }
    await qreplica(["extend", "vm1", "--dir", t.siteB, "--to-dir", C, "--interval", "0"]);
    const next2 = await waitFor("an incremental after the second resync", async () => (await forwardedPoints(t.siteB)).find((f) => f.targetSeq > second.targetSeq), 60_000);
    expect(next2.kind).toBe("incremental");
    await expectSamePoint(t, next2, "incremental after the second resync");

    // --- B forgets what it forwarded (its ledger lost the extension stream) while C holds points ---
    await siteB.kill("SIGTERM");
    forgetForwarding(t.siteB);
    expect(await forwardedPoints(t.siteB)).toEqual([]);
    const hashes3 = new Map((await t.relationship("vm1", C)).points.map((p) => [p.pointId, sha256File(p.disks[0]!.imagePath)]));
    siteB = await t.startSite(t.siteB);
    await t.vm.guestWrite("vda", ["write -P 0x41 28M 64k"]);
    await pointAfterWrite();
    // Extended again toward the same C: its Hello names no forwarded point, C holds some, so C asks for a resync.
    await qreplica(["extend", "vm1", "--dir", t.siteB, "--to-dir", C]);
    const third = await waitFor("B forwards a resync after forgetting", async () => (await forwardedPoints(t.siteB)).find((f) => f.kind === "resync"), 60_000);
    await expectSamePoint(t, third, "resync (B forgot)");
    const sent3 = await expectResyncBytes(C, third, 64 * 1024, 2 * MiB);
    const required = (await relationshipEvents(C)).filter((e) => e.type === "ResyncRequired").at(-1);
    expect(String(required?.data.reason)).toMatch(/holds no record of forwarding VM vm1 here/);
    for (const [pointId, hash] of hashes3) {
      const p = (await t.relationship("vm1", C)).points.find((x) => x.pointId === pointId);
      expect(sha256File(p!.disks[0]!.imagePath), `C's point ${pointId} after the third resync`).toBe(hash);
    }
    await t.vm.guestWrite("vda", ["write -P 0x42 30M 64k"]);
    const next3 = await waitFor("an incremental after the third resync", async () => (await forwardedPoints(t.siteB)).find((f) => f.targetSeq > third.targetSeq), 60_000);
    expect(next3.kind).toBe("incremental");
    await expectSamePoint(t, next3, "incremental after the third resync");
    const cState = await t.relationship("vm1", C);
    expect(cState.state).toBe("replicating");
    console.log(
      `resync bytes (data/wire of ${DISK_BYTES} compared): connected ${sent1.dataBytes}/${sent1.wireBytes}, at Hello ${sent2.dataBytes}/${sent2.wireBytes}, B forgot ${sent3.dataBytes}/${sent3.wireBytes}; ` +
        resyncLogs.map((l) => `${JSON.stringify(l.ownHashes)} hash ${Math.round(l.hashMs)} ms, cycle ${l.ms} ms`).join("; "),
    );
  });
});
