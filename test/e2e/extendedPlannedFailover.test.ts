/**
 * Issue 11, deliverable 2: a planned failover at C works as at B. A -> B -> C with the counter
 * guest on A; `qreplica failover VM --planned --dir C` goes through B: B has A's agent stop the VM
 * and ship a final cycle cut after the stop, forwards that point to C at once (whatever the
 * forward interval), and C fails over to it: the VM at C starts where A's stopped, no write lost
 * (A's disk after its QEMU exited is C's point byte for byte). Without A's agent at B the same
 * command is refused, nothing recorded. B records the failover at C (FailedOverDownstream): A's VM
 * and agent started again are refused at B as stale, the VM pauses, B commits nothing from it.
 * The failover cancelled at C: C tells B, B lifts the fence (DownstreamFailoverCancelled), A's agent
 * replicates to B again and B's forwarder is handed C's generation; then a reverse from C onto B.
 * Real sites, agent and QEMU; the README's commands.
 */
import { describe, expect, it } from "vitest";
import { readCounters, readDiskCounter, waitForCounter } from "../../guest/index.js";
import { compareImages, startSystemVm } from "../../src/qemu/processes/index.js";
import { QmpClient } from "../../src/qemu/qmp/index.js";
import { cliJson as qreplica, runCli, waitFor } from "../helpers/processes.js";
import { forwardedOn, relationshipEvents, threeSitesPerTest, waitForForwarded } from "../helpers/threeSites.js";

const newThreeSites = threeSitesPerTest();

/**
 * `failover --planned` at C once B's forwarder holds its stream to C: C's own refusal while it has
 * none (after a refused attempt B reconnects within seconds) is waited out, any other outcome returned.
 */
function plannedAt(siteDir: string) {
  return waitFor(
    "a planned failover at C that B's forwarder is connected for",
    async () => {
      const r = await runCli(["failover", "vm1", "--planned", "--dir", siteDir, "--json"]);
      return /is not connected: a planned failover needs it/.test(r.stdout + r.stderr) ? undefined : r;
    },
    120_000,
    1_000,
  );
}

interface Status {
  relationships: Array<{
    state: string;
    generation: number;
    primarySiteId: string;
    healthReasons: Array<{ code: string; level: string; message: string }>;
    extendedReplication?: { lastError: string };
  }>;
}

describe("extended replication: planned failover at C", { timeout: 300_000 }, () => {
  it("goes through B to A's agent: the VM stops at A, its final point reaches C, C starts it with nothing lost", async () => {
    const chain = await newThreeSites("qr-extplan-", { diskBytes: 8 * 1024 * 1024, intervalSeconds: 1, counterGuest: true, siteCMaxPoints: 100 });
    const { t, C } = chain;
    const guest = t.guest!;
    let agent = chain.agent;
    // A long forward interval: the final point must still reach C at once.
    await qreplica(["extend", "vm1", "--dir", t.siteB, "--to-dir", C, "--interval", "600"]);

    // Without A's agent connected to B, B cannot stop the VM: refused (exit 5), nothing recorded at C.
    await waitForForwarded(t.siteB, 1);
    await agent.kill("SIGKILL");
    const refused = await plannedAt(C);
    expect(refused.code, refused.stdout + refused.stderr).toBe(5);
    expect(refused.stdout + refused.stderr).toMatch(/site-b, which forwards its points here/);
    // B may still be closing the killed agent's stream when C's request arrives: either way it says so.
    expect(refused.stdout + refused.stderr).toMatch(/not connected|stream ended/);
    expect((await qreplica<Status>(["status", "vm1", "--dir", C])).relationships[0]).toMatchObject({ state: "replicating", generation: 1, primarySiteId: "site-b" });

    agent = t.startAgent();
    const pointsBefore = (await t.relationship()).points.length;
    await waitFor("A's agent back at B", async () => ((await t.relationship()).points.length > pointsBefore ? true : undefined), 90_000);
    const forwardedBefore = (await forwardedOn(t.siteB)).forwarded.length;
    const done = await plannedAt(C);
    expect(done.code, done.stdout + done.stderr).toBe(0);
    const planned = JSON.parse(done.stdout) as { recoveryPointId: string; generation: number; vm: { serialLog: string } };
    expect(planned.generation).toBe(2);
    // A's agent stopped the VM, quit its QEMU and ended: A's disk is the VM's last state.
    await guest.proc.exited;
    await agent.exited;
    const lastAtA = readCounters(guest.serialLogPath).at(-1)!;

    // The final point went to C past the interval, and is C's failover point.
    const ext = await forwardedOn(t.siteB);
    expect(ext.forwarded.length).toBe(forwardedBefore + 1);
    const final = ext.forwarded.at(-1)!;
    expect(final.targetPointId).toBe(planned.recoveryPointId);
    const point = (await t.relationship("vm1", C)).points.find((p) => p.pointId === planned.recoveryPointId)!;
    const cmp = await compareImages(guest.diskPath, point.disks[0]!.imagePath, { formatA: "qcow2", formatB: "qcow2" });
    expect(cmp.identical, cmp.detail).toBe(true);
    const finalCounter = await readDiskCounter(point.disks[0]!.imagePath);
    expect(finalCounter).toBeGreaterThanOrEqual(lastAtA);

    // The VM at C starts where A's stopped.
    await waitForCounter(planned.vm.serialLog, () => true, 90_000);
    expect(readCounters(planned.vm.serialLog)[0]).toBe(finalCounter);
    expect((await qreplica<Status>(["status", "vm1", "--dir", C])).relationships[0]).toMatchObject({ state: "failed-over-waiting-completion", generation: 2 });

    // --- B recorded the failover at C: why nothing replicates there, and the way on ---
    const recorded = (await relationshipEvents(t.siteB)).find((e) => e.type === "FailedOverDownstream");
    expect(recorded?.data).toMatchObject({ targetSiteId: "site-c", pointId: final.pointId, targetPointId: planned.recoveryPointId, generation: 1 });
    expect(recorded?.data.requestedBy).not.toBe("");
    const atB = await waitFor(
      "B's forwarder ended with the reason",
      async () => {
        const r = (await qreplica<Status>(["status", "vm1", "--dir", t.siteB])).relationships[0]!;
        return /forwarding ended/.test(r.extendedReplication?.lastError ?? "") ? r : undefined;
      },
      30_000,
    );
    expect(atB.state).toBe("paused");
    expect(atB.healthReasons.filter((r) => r.level === "critical")).toEqual([]);
    expect(atB.healthReasons.find((r) => r.code === "STATE_PAUSED")?.message).toMatch(/failed over at site site-c .*'qreplica reverse vm1 --dir/);

    // --- A's VM and agent started again (an operator's mistake): refused at B as stale, the VM paused ---
    const pointsAtB = (await t.relationship()).points.map((p) => p.pointId);
    const restarted = await startSystemVm({
      qmpSocketPath: guest.qmpSocketPath,
      disks: [{ nodeName: "vda", path: guest.diskPath, bus: "ide", bootIndex: 0 }],
      serialLogPath: `${guest.serialLogPath}.2`,
      accel: "tcg",
      memoryMiB: 64,
    });
    try {
      const returned = t.startAgent();
      const refusal = await waitFor("A's agent refused at B as stale", async () => (await relationshipEvents(t.siteB)).find((e) => e.type === "StaleGenerationRefused"), 90_000);
      expect(refusal.data).toMatchObject({ presentedGeneration: 1, currentGeneration: 1, peerIdentity: "agent-a" });
      await returned.exited;
      const qmp = await QmpClient.connect({ socketPath: guest.qmpSocketPath });
      try {
        expect((await qmp.execute<{ status: string }>("query-status")).status).toBe("paused");
      } finally {
        await qmp.close();
      }
      expect((await t.relationship()).points.map((p) => p.pointId)).toEqual(pointsAtB);

      // --- the failover at C cancelled: C tells B on the stream B relayed it on, B lifts the fence ---
      await qreplica(["failover", "vm1", "cancel", "--dir", C]);
      const lifted = await waitFor("B told of the cancel at C", async () => (await relationshipEvents(t.siteB)).find((e) => e.type === "DownstreamFailoverCancelled"), 30_000);
      expect(lifted.data).toMatchObject({ targetSiteId: "site-c", toldBy: "target", targetGeneration: 2, primaryIdentity: "agent-a" });
      expect(lifted.data.cancelledBy).not.toBe("");
      expect((await t.relationship()).state).toBe("replicating");
      // A's VM goes on (the operator resumes it now that the failover is cancelled): its agent replicates to B again.
      const resumed = await QmpClient.connect({ socketPath: guest.qmpSocketPath });
      try {
        await resumed.execute("cont");
      } finally {
        await resumed.close();
      }
      const back = t.startAgent();
      await waitFor("A's agent replicating to B again", async () => ((await t.relationship()).points.length > pointsAtB.length ? true : undefined), 90_000);
      // B's forwarder is back at C, handed C's generation after the cancel.
      const handedOver = await waitFor(
        "B's forwarder handed C's generation",
        async () => (await relationshipEvents(C)).find((e) => e.type === "GenerationAcknowledged" && e.data.peerIdentity === "site-b"),
        60_000,
      );
      expect(handedOver.data).toMatchObject({ presentedGeneration: 1, generation: 2 });

      // --- the reverse from C takes the VM from there too (A and B lost, say): A's agent then refused at B as stale ---
      await qreplica(["failover", "vm1", "--unplanned", "--dir", C]);
      await qreplica(["failover", "vm1", "complete", "--dir", C]);
      expect((await qreplica<{ generation: number }>(["reverse", "vm1", "--dir", C, "--to-dir", t.siteB])).generation).toBe(3);
      const reversed = await t.relationship("vm1", t.siteB);
      expect(reversed).toMatchObject({ primarySiteId: "site-c", generation: 3 });
      expect(reversed.downstreamFailover).toBeUndefined();
      await back.exited;
    } finally {
      await restarted.kill();
    }
  });
});
