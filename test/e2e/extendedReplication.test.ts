/**
 * Issue 11, deliverable 2: extended replication A -> B -> C. The counter guest runs on A and
 * writes all the time (between every cycle); B forwards its committed points to C; every point C
 * holds is byte-identical to the point of B it was forwarded from (B's points are the primary's
 * disk at their cut-off: test/e2e/*); an unplanned failover at C boots the guest with the point's
 * counter. Real sites, agent and QEMU, the README's commands.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readCounters, readDiskCounter, waitForCounter } from "../../guest/index.js";
import { compareImages, convertImage } from "../../src/qemu/processes/index.js";
import { readAddress } from "../../src/cli/siteClient.js";
import { cliJson as qreplica, runCli, waitFor } from "../helpers/processes.js";
import { forwardedOn, threeSitesPerTest } from "../helpers/threeSites.js";

const newThreeSites = threeSitesPerTest();

interface Extension {
  state: string;
  targetSiteId: string;
  lastForwardedPointId: string;
  targetPointId: string;
  pointsForwarded: number;
  lastError: string;
}
interface Status {
  relationships: Array<{ vmId: string; state: string; generation: number; primarySiteId: string; extendedReplication?: Extension }>;
}

describe("extended replication A -> B -> C", { timeout: 300_000 }, () => {
  it("with retention merging at B and a forward interval longer than A -> B's, every state C gets is the primary's byte for byte", async () => {
    const MiB = 1024 * 1024;
    // B keeps 3 points: its merges run while points are forwarded (only those not yet sent are held).
    const chain = await newThreeSites("qr-extend-ret-", { diskBytes: 32 * MiB, intervalSeconds: 1, maxPoints: 3, firstWrites: ["write -P 0x10 0 4M", "write -P 0x11 20M 1M"] });
    const { t, C } = chain;
    let siteB = chain.siteB;
    // Each forward then carries the changes of the 2-3 points B committed since the last one.
    await qreplica(["extend", "vm1", "--dir", t.siteB, "--to-dir", C, "--interval", "3"]);
    for (let k = 1; k <= 3; k++) {
      // Overwrites, a zeroed range that held data, and new data: all must reach C.
      await t.vm.guestWrite("vda", [`write -P ${0x20 + k} ${k * 2}M 512k`, `write -z ${k}M 256k`, `write -P ${0x30 + k} ${20 + k}M 64k`]);
      const doneAt = Date.now();
      const snapshot = join(t.dir, `primary-${k}.raw`);
      await convertImage(t.vm.guestUri("vda"), snapshot, { srcFormat: "raw", dstFormat: "raw" });
      // Nothing writes until C has a point cut after this batch: that point is this state.
      const f = await waitFor(
        `a point cut after batch ${k} forwarded to C`,
        async () => (await forwardedOn(t.siteB)).forwarded.find((x) => Date.parse(x.cutoffAt) > doneAt),
        60_000,
      );
      const c = (await t.relationship("vm1", C)).points.find((p) => p.pointId === f.targetPointId)!;
      const cmp = await compareImages(snapshot, c.disks[0]!.imagePath, { formatA: "raw", formatB: "qcow2" });
      expect(cmp.identical, `batch ${k}: C's ${f.targetPointId}: ${cmp.detail}`).toBe(true);
      if (k === 1) {
        // B restarts: it forwards on from its ledger's last forwarded point (incrementally).
        await siteB.kill("SIGTERM");
        siteB = await t.startSite(t.siteB);
      }
    }
    const ext = await forwardedOn(t.siteB);
    const onB = await t.relationship();
    // Retention at B merged points meanwhile (the oldest left is not the first).
    expect(onB.points[0]!.cycleSeq).toBeGreaterThan(1);
    expect(ext.forwarded.map((x) => x.targetSeq)).toEqual(ext.forwarded.map((_, i) => i + 1));
    expect(ext.forwarded.map((x) => x.kind)).toEqual(ext.forwarded.map((_, i) => (i === 0 ? "full" : "incremental")));
  });

  it("C's points are B's byte for byte, writes between cycles; an unplanned failover at C boots the point's counter", async () => {
    // C keeps every point it gets, so each can be compared with B's.
    const { t, C, siteB } = await newThreeSites("qr-extend-", { diskBytes: 8 * 1024 * 1024, intervalSeconds: 1, counterGuest: true, siteCMaxPoints: 100 });

    // A viewer may look but not extend: refused by role, and recorded nowhere as configured.
    const viewer = await runCli(["pki", "issue", "--ca-dir", t.caDir, "--name", "viewer1", "--role", "viewer", "--out-dir", join(t.dir, "viewer-tls")]);
    expect(viewer.code, viewer.stderr).toBe(0);
    const refused = await runCli([
      "extend",
      "vm1",
      "--site",
      readAddress(t.siteB),
      "--ca",
      join(t.caDir, "ca.crt"),
      "--cert",
      join(t.dir, "viewer-tls", "viewer1.crt"),
      "--key",
      join(t.dir, "viewer-tls", "viewer1.key"),
      "--to",
      readAddress(C),
      "--to-site",
      "site-c",
      "--json",
    ]);
    expect(refused.code).not.toBe(0);
    expect(refused.stdout + refused.stderr).toMatch(/operator/);
    expect((await forwardedOn(t.siteB)).target).toBeUndefined();
    // Forwarding to the VM's own primary is not extended replication.
    const toPrimary = await runCli(["extend", "vm1", "--dir", t.siteB, "--to", "127.0.0.1:1", "--to-site", "site-a"]);
    expect(toPrimary.code).not.toBe(0);
    expect(toPrimary.stderr).toMatch(/primary/);

    const started = await qreplica<{ extension: Extension }>(["extend", "vm1", "--dir", t.siteB, "--to-dir", C, "--interval", "3"]);
    expect(started.extension).toMatchObject({ state: "forwarding", targetSiteId: "site-c" });
    // C authorized B's site identity as the VM's primary.
    const authz = await qreplica<Array<{ primaryIdentity: string }>>(["authorizations", "--dir", C]);
    expect(authz.map((a) => a.primaryIdentity)).toContain("site-b");

    const forwardedCount = async () => (await qreplica<Status>(["status", "vm1", "--dir", t.siteB])).relationships[0]?.extendedReplication?.pointsForwarded ?? 0;
    await waitFor("two points forwarded to C", async () => ((await forwardedCount()) >= 2 ? true : undefined), 90_000);

    // A test failover at C works as at B: the test VM boots the point's counter, forwarding goes on.
    const test = await qreplica<{ testId: string; recoveryPointId: string; vm: { serialLog: string } }>(["failover", "vm1", "--test", "--dir", C]);
    const tested = (await t.relationship("vm1", C)).points.find((p) => p.pointId === test.recoveryPointId)!;
    const testedCounter = await readDiskCounter(tested.disks[0]!.imagePath);
    await waitForCounter(test.vm.serialLog, () => true, 90_000);
    expect(readCounters(test.vm.serialLog)[0]).toBe(testedCounter);
    const atTest = await forwardedCount();
    await waitFor("another point forwarded during the test", async () => ((await forwardedCount()) >= Math.max(atTest + 1, 4) ? true : undefined), 90_000);
    await qreplica(["test-failover", "stop", "vm1", "--dir", C]);
    const forwarded = (await qreplica<Status>(["status", "vm1", "--dir", t.siteB])).relationships[0]!.extendedReplication!;
    expect(forwarded.lastError).toBe("");
    const cStatus = (await qreplica<Status>(["status", "vm1", "--dir", C])).relationships[0]!;
    expect(cStatus.primarySiteId).toBe("site-b");

    // Stop the chain where it is: B stops (a disaster at B), so nothing changes while we compare.
    await siteB.kill("SIGTERM");
    const ext = await forwardedOn(t.siteB);
    const onB = await t.relationship("vm1", t.siteB);
    const onC = await t.relationship("vm1", C);
    expect(ext.forwarded.length).toBeGreaterThanOrEqual(4);
    expect(ext.forwarded[0]!.kind).toBe("full");
    expect(ext.forwarded.slice(1).every((f) => f.kind === "incremental")).toBe(true);
    // Byte for byte, through both chains (a point of B is the primary's disk at its cut-off), and
    // the counter C's point holds; compared a few at a time (each is a qemu-img process).
    const compareOne = async (f: (typeof ext.forwarded)[number]) => {
      const b = onB.points.find((p) => p.pointId === f.pointId);
      const c = onC.points.find((p) => p.pointId === f.targetPointId);
      expect(b, `B's point ${f.pointId}`).toBeDefined();
      expect(c, `C's point ${f.targetPointId}`).toBeDefined();
      expect(c!.cutoffAt).toBe(b!.cutoffAt);
      const cImage = c!.disks[0]!.imagePath;
      const cmp = await compareImages(b!.disks[0]!.imagePath, cImage, { formatA: "qcow2", formatB: "qcow2" });
      expect(cmp.identical, `${f.pointId} vs ${f.targetPointId}: ${cmp.detail}`).toBe(true);
      return readDiskCounter(cImage);
    };
    const counters: number[] = [];
    for (let i = 0; i < ext.forwarded.length; i += 4) counters.push(...(await Promise.all(ext.forwarded.slice(i, i + 4).map(compareOne))));
    // The guest wrote between cycles: the forwarded points are different states, in order.
    expect(new Set(counters).size).toBeGreaterThan(1);
    expect([...counters].sort((x, y) => x - y)).toEqual(counters);

    // --- disaster at A and B: fail over at C to its latest point ---
    // The last point B recorded as forwarded (B may have been stopped after C's ack, before its record).
    const last = ext.forwarded.at(-1)!;
    const fo = await qreplica<{ recoveryPointId: string; generation: number; vm: { serialLog: string } }>([
      "failover",
      "vm1",
      "--unplanned",
      "--point",
      last.targetPointId,
      "--dir",
      C,
    ]);
    expect(fo.generation).toBe(2);
    expect(fo.recoveryPointId).toBe(last.targetPointId);
    const point = onC.points.find((p) => p.pointId === fo.recoveryPointId)!;
    const pointCounter = await readDiskCounter(point.disks[0]!.imagePath);
    await waitForCounter(fo.vm.serialLog, () => true, 90_000);
    expect(readCounters(fo.vm.serialLog)[0]).toBe(pointCounter);
    expect(pointCounter).toBe(counters.at(-1));
  });
});
