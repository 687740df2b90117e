/**
 * Issue 11, deliverable 2: C learns of a failover at B through the generation. A -> B -> C with
 * forwarded points; the VM fails over at B (unplanned: the counter guest boots there) and the
 * failover is completed; B's agent then replicates the failover VM on to C: C records the failover
 * upstream with its reason, fences the old generation (B's identity presenting it is stale), and
 * resyncs by comparison against its newest point (only the differences travel, older points kept).
 * A point at C is byte-identical to the failover VM's disk once the writer is paused; an unplanned
 * failover at C boots that point's counter. Real sites, agents and QEMU.
 */
import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { readCounters, readDiskCounter, waitForCounter } from "../../guest/index.js";
import { RejectReason } from "../../src/gen/qreplica/v1/replication.js";
import { compareImages } from "../../src/qemu/processes/index.js";
import { QmpClient } from "../../src/qemu/qmp/index.js";
import { readAddress } from "../../src/cli/siteClient.js";
import { processAlive } from "../../src/site/failover/processes.js";
import { loadSiteConfig } from "../../src/site/siteConfig.js";
import { call, controlClientAs, refusal } from "../helpers/controlPlane.js";
import { cliJson, runCli, waitFor } from "../helpers/processes.js";
import { ProtocolClient, fileCredentials, msg } from "../helpers/protocolClient.js";
import { relationshipEvents, sha256File, threeSitesPerTest } from "../helpers/threeSites.js";

const newThreeSites = threeSitesPerTest();
const DISK_BYTES = 64 * 1024 * 1024; // the counter guest's disk

interface Extension {
  state: string;
  targetSiteId: string;
  pointsForwarded: number;
  agentPid: number;
  targetGeneration: number;
  lastError: string;
}
interface Status {
  relationships: Array<{ vmId: string; state: string; generation: number; extendedReplication?: Extension }>;
}
interface Failover {
  recoveryPointId: string;
  generation: number;
  vm: { serialLog: string; qmpSocket: string; diskImages: string[] };
}

describe("extended replication follows a failover at B", { timeout: 300_000 }, () => {
  it("C learns of it through the generation, resyncs only the differences, keeps its points, and fails over to the failover VM's data", async () => {
    const chain = await newThreeSites("qr-extfollow-", { diskBytes: 8 * 1024 * 1024, intervalSeconds: 1, counterGuest: true, siteCMaxPoints: 100, withSiteA: true });
    const { t, C, agent: agentA } = chain;
    const guest = t.guest!;
    let siteB = chain.siteB;
    await cliJson(["extend", "vm1", "--dir", t.siteB, "--to-dir", C, "--interval", "1"]);
    const statusB = async () => (await cliJson<Status>(["status", "vm1", "--dir", t.siteB])).relationships[0]!;
    await waitFor("two points forwarded to C", async () => (((await statusB()).extendedReplication?.pointsForwarded ?? 0) >= 2 ? true : undefined), 90_000);

    // --- disaster at A: the agent and the guest are gone; unplanned failover at B ---
    await agentA.kill("SIGKILL");
    await guest.proc.kill();
    const fo = await cliJson<Failover>(["failover", "vm1", "--unplanned", "--dir", t.siteB]);
    expect(fo.generation).toBe(2);
    const foPoint = (await t.relationship()).points.find((p) => p.pointId === fo.recoveryPointId)!;
    await waitForCounter(fo.vm.serialLog, () => true, 90_000);
    expect(readCounters(fo.vm.serialLog)[0]).toBe(await readDiskCounter(foPoint.disks[0]!.imagePath));
    // Until the failover is completed (it may still be cancelled) nothing moves at C: the forwarder says why it waits.
    await waitFor("the forwarder waiting for the completion", async () => ((await statusB()).extendedReplication?.lastError.match(/qreplica complete/) ? true : undefined), 30_000);

    // C's points as they are before it learns of the failover: kept byte for byte.
    const before = await t.relationship("vm1", C);
    expect(before.generation).toBe(1);
    const hashes = new Map(before.points.map((p) => [p.pointId, sha256File(p.disks[0]!.imagePath)]));
    const newestBefore = before.points.at(-1)!;

    // A VM has one replica at a time: reverse toward A is refused while C is its replica, naming the fix.
    const reverse = await runCli(["reverse", "vm1", "--dir", t.siteB, "--to-dir", t.siteA]);
    expect(reverse.code).not.toBe(0);
    expect(reverse.stderr).toMatch(/one replica at a time.*qreplica extend vm1 --dir .* --stop/s);
    expect((await cliJson<Status>(["status", "--dir", t.siteA])).relationships.filter((r) => r.vmId === "vm1" && r.generation > 1)).toEqual([]);
    // The site refuses it too (a client that skips the CLI's check).
    const control = controlClientAs(readAddress(t.siteB), t.admin(t.siteB));
    const direct = await refusal(call(control, control.startReverseReplication, { vmId: "vm1", replicaAddress: readAddress(t.siteA) }));
    control.close();
    expect(direct.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(direct.details).toMatch(/site site-c.*one replica at a time/);

    // --- completed: B's agent replicates the failover VM on to C ---
    await cliJson(["failover", "complete", "vm1", "--dir", t.siteB]);
    const following = await waitFor(
      "B following the failover with an agent",
      async () => {
        const e = (await statusB()).extendedReplication;
        return e?.state === "following-failover" ? e : undefined;
      },
      30_000,
    );
    expect(following.targetGeneration).toBe(2);
    expect(following.agentPid).toBeGreaterThan(1);

    // C records the failover upstream as its own event, with the reason, and resyncs by comparison.
    const resync = await waitFor(
      "the resync point on C",
      async () => (await relationshipEvents(C)).find((e) => e.type === "CycleCommitted" && e.data.kind === "resync" && e.data.generation === 2),
      120_000,
    );
    const { events } = await cliJson<{ events: Array<{ type: string; data: Record<string, unknown> }> }>(["events", "vm1", "--dir", C, "--limit", "1000"]);
    const upstream = events.find((e) => e.type === "PrimaryFailedOverUpstream");
    expect(upstream?.data).toMatchObject({ peerIdentity: "site-b", previousGeneration: 1, generation: 2 });
    expect(String(upstream?.data.reason)).toMatch(/VM vm1 failed over at site site-b \(unplanned, to point .*, generation 2 there\)/);
    // Only the differences travelled: the whole disk was compared, a small part of it sent.
    const sent = resync.data as { dataBytes: number; wireBytes: number; comparedBytes?: number };
    expect(sent.comparedBytes).toBe(DISK_BYTES);
    expect(sent.dataBytes).toBeGreaterThan(0);
    expect(sent.dataBytes).toBeLessThan(DISK_BYTES / 32);
    expect(sent.wireBytes).toBeLessThan(DISK_BYTES / 32);
    const afterResync = await t.relationship("vm1", C);
    expect(afterResync).toMatchObject({ generation: 2, primaryIdentity: "site-b" });
    // Every point C had is still there, byte for byte.
    for (const [pointId, hash] of hashes) {
      const p = afterResync.points.find((x) => x.pointId === pointId);
      expect(p, `C's point ${pointId} after the resync`).toBeDefined();
      expect(sha256File(p!.disks[0]!.imagePath), `C's point ${pointId}`).toBe(hash);
    }
    expect(afterResync.points.at(-1)!.cycleSeq).toBeGreaterThan(newestBefore.cycleSeq);

    // The old generation is fenced: B's identity presenting it (its forwarder's Hello) is stale.
    const bTls = loadSiteConfig(t.siteB);
    const old = new ProtocolClient(readAddress(C), fileCredentials({ caFile: bTls.caFile, certFile: bTls.certFile, keyFile: bTls.keyFile }));
    await old.send(msg.hello({ vmId: "vm1", generation: 1, disks: [{ diskId: "vda", sizeBytes: DISK_BYTES }], sourceSiteId: "site-b", agentId: "site-b-forwarder" }));
    const refused = await old.expect("helloRejected");
    expect(refused.reason).toBe(RejectReason.REJECT_REASON_STALE_GENERATION);
    expect(Number(refused.currentGeneration)).toBe(2);
    await old.waitStatus();
    old.client.close();

    // --- pause the writer: stop B (its agent runs on, detached), end the agent (SIGTERM: never inside
    // its cut-off pause, whose end resumes the guest), stop the guest's vCPUs ---
    await siteB.kill("SIGTERM");
    process.kill(following.agentPid, "SIGTERM");
    await waitFor("B's agent gone", async () => (processAlive(following.agentPid) ? undefined : true), 15_000);
    const qmp = await QmpClient.connect({ socketPath: fo.vm.qmpSocket });
    await qmp.execute("stop");
    await qmp.close();
    const pausedAt = Date.now();
    // B adopts its failover VM and restarts the agent, which goes on at C's generation.
    siteB = await t.startSite(t.siteB);
    const cut = await waitFor("a point on C cut after the pause", async () => (await t.relationship("vm1", C)).points.find((p) => Date.parse(p.cutoffAt) > pausedAt), 120_000);
    const cmp = await compareImages(fo.vm.diskImages[0]!, cut.disks[0]!.imagePath, { formatA: "qcow2", formatB: "qcow2" });
    expect(cmp.identical, `C's ${cut.pointId} vs B's failover VM disk: ${cmp.detail}`).toBe(true);
    const cutCounter = await readDiskCounter(cut.disks[0]!.imagePath);
    expect(cutCounter).toBeGreaterThanOrEqual(readCounters(fo.vm.serialLog).at(-1)!);
    expect((await cliJson<Status>(["status", "vm1", "--dir", C])).relationships[0]).toMatchObject({ state: "replicating", generation: 2 });
    // B restarted its agent for the adopted VM; stopping the extension ends it for good.
    const restarted = (await statusB()).extendedReplication!;
    expect(restarted).toMatchObject({ state: "following-failover", targetGeneration: 2 });
    expect(restarted.agentPid).not.toBe(following.agentPid);
    const stopped = await cliJson<{ extension: Extension }>(["extend", "vm1", "--dir", t.siteB, "--stop"]);
    expect(stopped.extension.state).toBe("stopped");
    await waitFor("the restarted agent gone", async () => (processAlive(restarted.agentPid) ? undefined : true), 15_000);

    // --- disaster at B: an unplanned failover at C boots C's newest point's counter ---
    const newest = (await t.relationship("vm1", C)).points.at(-1)!;
    const atC = await cliJson<Failover>(["failover", "vm1", "--unplanned", "--point", newest.pointId, "--dir", C]);
    expect(atC.generation).toBe(3);
    await waitForCounter(atC.vm.serialLog, () => true, 90_000);
    expect(readCounters(atC.vm.serialLog)[0]).toBe(await readDiskCounter(newest.disks[0]!.imagePath));
    expect(await readDiskCounter(newest.disks[0]!.imagePath)).toBe(cutCounter);
  });
});
