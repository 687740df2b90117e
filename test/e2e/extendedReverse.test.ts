/**
 * Issue 11, deliverable 2: reverse at C as at B. A -> B -> C with the counter guest on A; the
 * regional disaster (A's agent and B gone), an unplanned failover at C,
 * complete, and `qreplica reverse VM --dir C --to-dir B` as for any reverse: B, which holds the
 * VM's points as A's replica, takes C as the primary at C's generation, keeps its points, and its
 * first point from C is a resync against its newest one (only the differences travel). A's agent,
 * back, is refused at B as stale and fences its VM. Real sites, agents and QEMU; the README's commands.
 */
import { open } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { COUNTER_OFFSET, encodeCounterRecord, readCounters, readDiskRecord, waitForCounter } from "../../guest/index.js";
import { compareImages, convertImage } from "../../src/qemu/processes/index.js";
import { QmpClient } from "../../src/qemu/qmp/index.js";
import { controlClient, unary } from "../../src/cli/siteClient.js";
import { cliJson as qreplica, waitFor } from "../helpers/processes.js";
import { forwardedOn, relationshipEvents, threeSitesPerTest, waitForForwarded } from "../helpers/threeSites.js";

const MiB = 1024 * 1024;
const DISK_BYTES = 8 * MiB;
const newThreeSites = threeSitesPerTest();

describe("extended replication: reverse at C", { timeout: 300_000 }, () => {
  it("unplanned failover at C, complete, reverse onto B by resync against B's newest point, A's agent fenced at B", async () => {
    const chain = await newThreeSites("qr-extrev-", { diskBytes: DISK_BYTES, intervalSeconds: 1, counterGuest: true, siteCMaxPoints: 100 });
    const { t, C, agent } = chain;
    const guest = t.guest!;
    let siteB = chain.siteB;
    await qreplica(["extend", "vm1", "--dir", t.siteB, "--to-dir", C]);
    await waitForForwarded(t.siteB, 2);

    // --- regional disaster: A's agent and site B gone; fail over at C and complete ---
    await agent.kill("SIGKILL");
    await siteB.kill("SIGTERM");
    const last = (await forwardedOn(t.siteB)).forwarded.at(-1)!;
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
    const foImage = (await t.relationship("vm1", C)).points.find((p) => p.pointId === fo.recoveryPointId)!.disks[0]!.imagePath;
    const foRecord = (await readDiskRecord(foImage))!;
    await waitForCounter(fo.vm.serialLog, () => true, 90_000);
    expect(readCounters(fo.vm.serialLog)[0]).toBe(foRecord.counter);
    // C's point is an overlay chain the failover VM now runs on: a raw copy of it, read before the
    // VM's writes could reach it (they go to the VM's own overlay), is the VM's disk but for LBA 1.
    const foRaw = join(t.dir, "c-failover-point.raw");
    await convertImage(foImage, foRaw, { srcFormat: "qcow2", dstFormat: "raw" });
    await qreplica(["failover", "vm1", "complete", "--dir", C]);

    // --- B comes back (its forwarder still configured: C refuses it) and C reverses onto it ---
    siteB = await t.startSite(t.siteB);
    const before = await t.relationship("vm1", t.siteB);
    expect(before.primarySiteId).toBe("site-a");
    // Only the site B forwarded to may take the VM over there, and with no seed: B compares with its own point.
    const b = controlClient({ dir: t.siteB });
    const prepare = (primarySiteId: string, seeds: Array<{ diskId: string; imagePath: string }> = []) =>
      unary(b, b.prepareReverseReplication, { vmId: "vm1", generation: 2n, primarySiteId, primaryIdentity: primarySiteId, disks: [], seeds, vmSpecJson: "" }).then(
        () => "accepted",
        (err: Error) => err.message,
      );
    expect(await prepare("site-x")).toMatch(/only site-c, the site it forwarded them to, may reverse onto it, not site-x/);
    expect(await prepare("site-c", [{ diskId: "vda", imagePath: foImage }])).toMatch(/give no --seed/);
    b.close();
    expect(await t.relationship("vm1", t.siteB)).toMatchObject({ primarySiteId: "site-a", generation: 1, state: "replicating" });

    const reverse = await qreplica<{ generation: number; recoveryPointId: string }>(["reverse", "vm1", "--dir", C, "--to-dir", t.siteB, "--wait"]);
    expect(reverse.generation).toBe(2);
    const after = await t.relationship("vm1", t.siteB);
    expect(after).toMatchObject({ primarySiteId: "site-c", primaryIdentity: "site-c", generation: 2 });
    // B's older points stay, the reverse's first point on top of them.
    const ids = after.points.map((p) => p.pointId);
    for (const p of before.points) expect(ids).toContain(p.pointId);
    const seeded = after.points.find((p) => p.pointId === reverse.recoveryPointId)!;
    expect(ids.indexOf(seeded.pointId)).toBe(before.points.length);
    // Forwarding to C, now the primary, ended with the reverse (recorded with the operator).
    expect((await forwardedOn(t.siteB)).target).toBeUndefined();

    // Only the differences travelled: the ledger's byte counts of the resync cycle.
    const commit = (await relationshipEvents(t.siteB)).find((e) => e.type === "CycleCommitted" && Number(e.data.cycleSeq) === seeded.cycleSeq);
    expect(commit?.data.kind).toBe("resync");
    expect(Number(commit?.data.generation)).toBe(2);
    const dataBytes = Number(commit?.data.dataBytes);
    const wireBytes = Number(commit?.data.wireBytes);
    expect(dataBytes).toBeGreaterThan(0);
    expect(dataBytes).toBeLessThanOrEqual(DISK_BYTES / 16);
    expect(wireBytes).toBeLessThanOrEqual(DISK_BYTES / 16);

    // Byte for byte C's failover VM's disk at the cut-off: the guest writes only LBA 1 (its
    // counter record), so that disk is C's point with the record the VM had written by then, one
    // its serial console printed, in this boot.
    const record = (await readDiskRecord(seeded.disks[0]!.imagePath))!;
    expect(record.boots).toBe(foRecord.boots + 1);
    expect(readCounters(fo.vm.serialLog)).toContain(record.counter);
    const expected = await open(foRaw, "r+");
    await expected.write(encodeCounterRecord(record), 0, 512, COUNTER_OFFSET);
    await expected.close();
    const cmp = await compareImages(foRaw, seeded.disks[0]!.imagePath, { formatA: "raw", formatB: "qcow2" });
    expect(cmp.identical, cmp.detail).toBe(true);

    // --- A's agent returns: B refuses it as stale (not as a stranger), and it fences its VM ---
    const returned = t.startAgent();
    const refusal = await waitFor(
      "A's agent refused at B as stale",
      async () => (await relationshipEvents(t.siteB)).find((e) => e.type === "StaleGenerationRefused" && Number(e.data.presentedGeneration) === 1),
      90_000,
    );
    expect(refusal.data).toMatchObject({ currentGeneration: 2 });
    expect(refusal.data.peerIdentity).not.toBe("site-c");
    await returned.exited;
    const qmp = await QmpClient.connect({ socketPath: guest.qmpSocketPath });
    try {
      expect((await qmp.execute<{ status: string }>("query-status")).status).toBe("paused");
    } finally {
      await qmp.close();
    }
    // C's reverse goes on: B's points from C keep arriving at generation 2.
    await waitFor("a later point from C on B", async () => ((await t.relationship("vm1", t.siteB)).points.length > ids.length ? true : undefined), 60_000);
  });
});
