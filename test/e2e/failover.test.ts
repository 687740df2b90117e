import { createHash } from "node:crypto";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readCounters, readDiskCounter, waitForCounter } from "../../guest/index.js";
import { QmpClient } from "../../src/qemu/qmp/index.js";
import { convertImage } from "../../src/qemu/processes/index.js";
import { getSqliteEventStore, relationshipStream } from "../../src/ledger/index.js";
import { waitFor, cliJson, runCli } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const newTwoSites = twoSitesPerTest();

async function imageHash(t: TwoSites, image: string): Promise<string> {
  const raw = join(t.dir, `hash-${Date.now()}.raw`);
  await convertImage(image, raw, { dstFormat: "raw" });
  const h = createHash("sha256").update(readFileSync(raw)).digest("hex");
  rmSync(raw);
  return h;
}

async function eventTypes(t: TwoSites): Promise<string[]> {
  const store = getSqliteEventStore({ path: join(t.siteB, "ledger.sqlite"), create: false });
  try {
    return (await store.readStream(relationshipStream("vm1"))).map((e) => e.type);
  } finally {
    await store.close();
  }
}

describe("failover with the counter guest (qemu-system-x86_64, real processes)", { timeout: 300_000 }, () => {
  it("test failover while replication goes on, then unplanned failover to an older point; the old primary is refused and fenced", async () => {
    const t = await newTwoSites("qr-fo-", { diskBytes: 8 * MiB, intervalSeconds: 1, counterGuest: true });
    await t.startSite(t.siteA);
    await t.startSite(t.siteB);
    await waitForCounter(t.guest!.serialLogPath, (v) => v > 5, 90_000);
    const agent = t.startAgent();
    await waitFor("three recovery points", async () => ((await t.relationship()).points.length >= 3 ? true : undefined), 120_000);

    // --- test failover on the latest point ---
    const test = await cliJson<{ testId: string; recoveryPointId: string; vm: { serialLog: string; timeToRunningMs: number } }>(["failover", "vm1", "--test", "--dir", t.siteB]);
    const tested = (await t.relationship()).points.find((p) => p.pointId === test.recoveryPointId)!;
    const testedImage = tested.disks[0]!.imagePath;
    const testedCounter = await readDiskCounter(testedImage);
    const hashBefore = await imageHash(t, testedImage);
    expect(testedCounter).toBeGreaterThan(0);
    // The test VM boots from the point: the first counter it prints is the point's.
    await waitForCounter(test.vm.serialLog, () => true, 90_000);
    expect(readCounters(test.vm.serialLog)[0]).toBe(testedCounter);
    const seqAtStart = (await t.relationship()).lastCycleSeq;
    await waitFor("three more points during the test", async () => ((await t.relationship()).lastCycleSeq >= seqAtStart + 3 ? true : undefined), 120_000);
    const during = await t.relationship();
    expect(Object.keys(during.testFailovers)).toEqual([test.testId]);
    // New points keep counting up: replication went on.
    const counters = await Promise.all(during.points.filter((p) => p.cycleSeq > tested.cycleSeq).map((p) => readDiskCounter(p.disks[0]!.imagePath)));
    expect(counters.length).toBeGreaterThanOrEqual(3);
    for (let i = 1; i < counters.length; i++) expect(counters[i]!).toBeGreaterThanOrEqual(counters[i - 1]!);
    expect(counters[0]!).toBeGreaterThanOrEqual(testedCounter);
    await cliJson(["test-failover", "stop", "vm1", "--dir", t.siteB]);
    expect(await imageHash(t, testedImage)).toBe(hashBefore); // the tested point is untouched
    expect(existsSync(join(t.siteB, "run", "tests", "vm1", test.testId))).toBe(false);
    const afterTest = await eventTypes(t);
    expect(afterTest).toEqual(expect.arrayContaining(["TestFailoverStarted", "TestFailoverRunning", "TestFailoverStopped"]));

    // --- unplanned failover to an older point, with the primary "gone" ---
    await agent.kill("SIGKILL");
    const points = (await t.relationship()).points;
    const older = points[points.length - 2]!;
    const olderCounter = await readDiskCounter(older.disks[0]!.imagePath);
    const fo = await cliJson<{ recoveryPointId: string; generation: number; vm: { serialLog: string } }>([
      "failover",
      "vm1",
      "--unplanned",
      "--point",
      older.pointId,
      "--dir",
      t.siteB,
    ]);
    expect(fo.recoveryPointId).toBe(older.pointId);
    expect(fo.generation).toBe(2);
    // The points once the failover stands: a cycle the SIGKILL caught after its CycleEnd may still
    // have committed after `points` was read, but none of generation 1 can land after FailedOver.
    const atFailover = (await t.relationship()).points;
    await waitForCounter(fo.vm.serialLog, () => true, 90_000);
    expect(readCounters(fo.vm.serialLog)[0]).toBe(olderCounter);
    expect((await t.relationship()).state).toBe("failed-over-waiting-completion");

    // --- the old primary's agent comes back: refused as stale, its VM paused ---
    t.startAgent();
    await waitFor("the stale refusal in the ledger", async () => ((await eventTypes(t)).includes("StaleGenerationRefused") ? true : undefined), 60_000);
    const qmp = await QmpClient.connect({ socketPath: t.guest!.qmpSocketPath });
    try {
      await waitFor("the old primary paused", async () => ((await qmp.execute<{ status: string }>("query-status")).status === "paused" ? true : undefined), 30_000);
    } finally {
      await qmp.close();
    }
    const state = await t.relationship();
    // Nothing accepted from it. (Not lastCycleSeq: the cycle the SIGKILL cut may be recorded as
    // failed after the failover, which moves lastCycleSeq without adding a point.)
    expect(state.points.map((p) => p.pointId)).toEqual(atFailover.map((p) => p.pointId));

    // --- complete: the other points are dropped, the failed-over VM keeps running ---
    const done = await cliJson<{ droppedRecoveryPointIds: string[] }>(["failover", "vm1", "complete", "--dir", t.siteB]);
    expect(done.droppedRecoveryPointIds.length).toBe(atFailover.length - 1);
    expect((await t.relationship()).state).toBe("failed-over");
    const last = readCounters(fo.vm.serialLog).at(-1)!;
    await waitForCounter(fo.vm.serialLog, (v) => v > last, 30_000);

    // --- reverse replication back to site A onto the old disk: only differing chunks travel ---
    await t.guest!.proc.stop(); // the old primary is shut down; its disk is the seed
    await cliJson(["reverse", "vm1", "--dir", t.siteB, "--to-dir", t.siteA, "--seed", `vda=${t.guest!.diskPath}`]);
    const reversed = await waitFor(
      "the first point on site A",
      async () => {
        const s = await t.relationship("vm1", t.siteA);
        return s.points.length > 0 ? s : undefined;
      },
      120_000,
    );
    expect(reversed.generation).toBe(2);
    expect(reversed.primaryIdentity).toBe("site-b");
    const storeA = getSqliteEventStore({ path: join(t.siteA, "ledger.sqlite"), create: false });
    const committed = (await storeA.readStream(relationshipStream("vm1"))).find((e) => e.type === "CycleCommitted")!.data as {
      dataBytes: number;
      zeroBytes: number;
      comparedBytes: number;
    };
    await storeA.close();
    expect(committed.comparedBytes).toBe(64 * MiB); // the whole disk compared, recorded in the ledger
    // The VM ran on from an older point on a tiny counter sector: far less than the 64 MiB disk crosses.
    expect(committed.dataBytes + committed.zeroBytes).toBeLessThanOrEqual(128 * 1024);
    expect(committed.dataBytes).toBeGreaterThan(0);
    const reverseCounter = await readDiskCounter(reversed.points[0]!.disks[0]!.imagePath);
    expect(reverseCounter).toBeGreaterThanOrEqual(olderCounter);
    await waitFor("incremental reverse cycles", async () => ((await t.relationship("vm1", t.siteA)).points.length >= 2 ? true : undefined), 60_000);

    // --- the ledgers name who did each command: the CLI with --dir presents each site's admin certificate ---
    const actors = async (siteDir: string, stream: string) => {
      const s = getSqliteEventStore({ path: join(siteDir, "ledger.sqlite"), create: false });
      try {
        return (await s.readStream(stream)).map((e) => [e.type, e.metadata.actor ?? "-", e.metadata.actorRole ?? "-"]);
      } finally {
        await s.close();
      }
    };
    const onB = await actors(t.siteB, relationshipStream("vm1"));
    for (const type of ["TestFailoverStarted", "TestFailoverStopped", "FailedOver", "FailoverCompleted", "ReverseReplicationStarted"]) {
      expect(onB.find((e) => e[0] === type)).toEqual([type, "site-b-admin", "admin"]);
    }
    expect(onB.find((e) => e[0] === "CycleCommitted")).toEqual(["CycleCommitted", "-", "-"]);
    expect((await actors(t.siteA, relationshipStream("vm1"))).find((e) => e[0] === "ReplicationEnabled")).toEqual(["ReplicationEnabled", "site-a-admin", "admin"]);
    // The reverse authorized exactly site B's identity on A, recorded with the caller; no wildcard.
    expect(await actors(t.siteA, "authorizations")).toEqual([["AuthorizationAdded", "site-a-admin", "admin"]]);
  });
});

describe("cancelled failover", { timeout: 300_000 }, () => {
  it("cancel keeps every point; the fenced old primary resumes and adopts the new generation", async () => {
    const t = await newTwoSites("qr-fo-", { diskBytes: 8 * MiB, intervalSeconds: 1, counterGuest: true });
    await t.startSite(t.siteB);
    await waitForCounter(t.guest!.serialLogPath, (v) => v > 3, 90_000);
    const agent = t.startAgent();
    await waitFor("two recovery points", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 120_000);
    const enabled = (await eventTypes(t)).includes("ReplicationEnabled");
    expect(enabled).toBe(true);
    expect((await t.relationship()).vmSpec).toMatchObject({ machine: "q35", memoryMiB: 64 });

    const fo = await cliJson<{ generation: number; vm: { serialLog: string } }>(["failover", "vm1", "--unplanned", "--dir", t.siteB]);
    expect(fo.generation).toBe(2);
    // The running agent's next cycle is refused as stale: it stops and pauses its VM.
    const qmp = await QmpClient.connect({ socketPath: t.guest!.qmpSocketPath });
    try {
      await waitFor("the old primary fenced", async () => ((await qmp.execute<{ status: string }>("query-status")).status === "paused" ? true : undefined), 60_000);
      await agent.exited;
      const pointsBefore = (await t.relationship()).points.map((p) => p.pointId);

      const cancelled = await cliJson<{ state: string }>(["failover", "vm1", "cancel", "--dir", t.siteB]);
      expect(cancelled.state).toBe("replicating");
      expect((await t.relationship()).points.map((p) => p.pointId)).toEqual(pointsBefore);

      // The operator resumes the VM and the agent: it presents generation 1 and is handed generation 2.
      await qmp.execute("cont");
      await qmp.close(); // one client per monitor: the agent needs it
      t.startAgent();
      const seq = (await t.relationship()).lastCycleSeq;
      await waitFor("cycles in the new generation", async () => ((await t.relationship()).lastCycleSeq >= seq + 2 ? true : undefined), 90_000);
      expect(await eventTypes(t)).toEqual(expect.arrayContaining(["FailedOver", "FailoverCancelled", "GenerationAcknowledged"]));
      expect((await t.relationship()).generation).toBe(2);
    } finally {
      await qmp.close();
    }
  });
});

describe("planned failover", { timeout: 300_000 }, () => {
  it("stops the primary, ships its last changes (zero data loss), starts the VM on B and reverses to A", async () => {
    const t = await newTwoSites("qr-fo-", { diskBytes: 8 * MiB, intervalSeconds: 1, counterGuest: true });
    await t.startSite(t.siteA);
    await t.startSite(t.siteB);
    await waitForCounter(t.guest!.serialLogPath, (v) => v > 3, 90_000);
    t.startAgent();
    await waitFor("two recovery points", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 120_000);

    // stderr is a pipe: progress as JSON lines there; stdout is one JSON document.
    const run = await runCli(["failover", "vm1", "--planned", "--dir", t.siteB, "--primary-dir", t.siteA, "--json"]);
    expect(run.code, run.stderr).toBe(0);
    const fo = JSON.parse(run.stdout) as { recoveryPointId: string; generation: number; vm: { serialLog: string }; primaryDisks: Array<{ diskId: string; imagePath: string }> };
    const progress = run.stderr
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { event: string; vm: string; recoveryPointId?: string; kind?: string; message?: string });
    expect(progress[0]).toMatchObject({ event: "phase", vm: "vm1", message: expect.stringContaining("stop the VM") });
    // The final cycle's commit, with the point the failover used.
    expect(progress.filter((p) => p.event === "committed").at(-1)).toMatchObject({ vm: "vm1", kind: "incremental", recoveryPointId: fo.recoveryPointId });
    expect(fo.generation).toBe(2);
    expect(fo.primaryDisks).toEqual([{ diskId: "vda", imagePath: t.guest!.diskPath }]);
    await t.guest!.proc.exited; // the agent quit the old primary after its final cycle
    const finalOnPrimary = await readDiskCounter(t.guest!.diskPath);
    await waitForCounter(fo.vm.serialLog, () => true, 90_000);
    // Zero data loss: the VM on B starts exactly where the stopped primary's disk ended.
    expect(readCounters(fo.vm.serialLog)[0]).toBe(finalOnPrimary);
    const types = await eventTypes(t);
    expect(types).toEqual(expect.arrayContaining(["FailoverPrepared", "FailedOver", "ReverseReplicationStarted"]));

    const reversed = await waitFor(
      "the first reverse point on site A",
      async () => {
        const s = await t.relationship("vm1", t.siteA);
        return s.points.length > 0 ? s : undefined;
      },
      120_000,
    );
    expect(reversed.generation).toBe(2);
    const storeA = getSqliteEventStore({ path: join(t.siteA, "ledger.sqlite"), create: false });
    const committed = (await storeA.readStream(relationshipStream("vm1"))).find((e) => e.type === "CycleCommitted")!.data as { dataBytes: number; zeroBytes: number };
    await storeA.close();
    // Only what the VM wrote on B since the failover crosses back: the counter's 64 KiB block.
    expect(committed.dataBytes + committed.zeroBytes).toBeLessThanOrEqual(128 * 1024);
  });
});
