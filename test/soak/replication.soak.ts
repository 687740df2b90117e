/**
 * Soak: continuous replication of a writing guest for a bounded time (QR_SOAK_MINUTES, 2 by
 * default as in CI; 10 for the full form), a test failover in the middle, and every process
 * sampled (RSS and open fds) every few seconds: site B, the agent, the primary (a
 * qemu-storage-daemon VM), site B's qemu-storage-daemon, and the test failover's
 * qemu-system-x86_64 while it runs. Their slopes are printed (and written as JSON to
 * QR_SOAK_REPORT when set). It fails on any error: a failed cycle, an error logged by the site or
 * the agent, a process that exits, a file-descriptor leak, runaway memory, or a last point that
 * differs from the primary.
 */
import { randomFillSync } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { stringify as toYaml } from "yaml";
import { describe, expect, it } from "vitest";
import { getSqliteEventStore, relationshipStream, type RecordedEvent } from "../../src/ledger/index.js";
import { NbdClient } from "../../src/qemu/nbd/index.js";
import { compareImages, convertImage } from "../../src/qemu/processes/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { call, controlClientAs } from "../helpers/controlPlane.js";
import { AGENT, startDaemon, waitFor } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";
import { formatTrend, ProcessSampler } from "./procSamples.js";

const MiB = 1024 * 1024;
const MINUTES = Number(process.env.QR_SOAK_MINUTES ?? 2);
const SAMPLE_MS = 2_000;
/** The guest's steady write rate: 2 MiB/s in 256 KiB writes over a 256 MiB region. */
const WRITE_BYTES = 256 * 1024;
const WRITE_EVERY_MS = 125;
const REGION = 256 * MiB;
const newTwoSites = twoSitesPerTest();

/** Pino lines at level error (50) or worse. */
function errorLines(file: string): string[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => {
      if (!l.startsWith("{")) return false;
      try {
        return (JSON.parse(l) as { level?: number }).level! >= 50;
      } catch {
        return false;
      }
    });
}

/** The agent config of startAgent, plus a VM spec: the test failover boots a qemu-system VM from the point. */
function writeAgentConfigWithSpec(t: TwoSites, address: string): void {
  writeFileSync(
    t.agentConfig,
    toYaml({
      siteId: "site-a",
      stateDir: join(t.dir, "agent-state"),
      tls: { caFile: join(t.caDir, "ca.crt"), certFile: join(t.dir, "agent-tls", "agent-a.crt"), keyFile: join(t.dir, "agent-tls", "agent-a.key") },
      vms: [
        {
          id: "vm1",
          qmpSocket: t.vm.qmpSocketPath,
          nbdSocket: t.vm.nbdSocketPath,
          disks: [{ id: "vda", node: "node-vda" }],
          replicaSite: address,
          replicaSiteId: "site-b",
          intervalSeconds: 1,
          compressionLevel: 1,
          spec: { machine: "q35", cpus: 1, memoryMiB: 64, disks: [{ diskId: "vda", bus: "virtio" }], nics: [] },
        },
      ],
    }),
  );
}

/** The writing guest: WRITE_BYTES every WRITE_EVERY_MS, paced by the clock, round the region. */
function steadyWriter(nbd: NbdClient): { stop(): Promise<void>; written(): number } {
  const block = Buffer.alloc(WRITE_BYTES);
  let writing = true;
  let written = 0;
  const done = (async () => {
    const started = performance.now();
    for (let k = 0; writing; k++) {
      const due = started + k * WRITE_EVERY_MS;
      if (due > performance.now()) await sleep(due - performance.now());
      // A third random, a third zeroes, a third text-like: compression and zero detection both work.
      if (k % 3 === 0) randomFillSync(block);
      else if (k % 3 === 1) block.fill(0);
      else block.write(`${new Date().toISOString()} soak line ${k} `.repeat(WRITE_BYTES / 48).slice(0, WRITE_BYTES));
      await nbd.write((k * WRITE_BYTES) % REGION, block);
      written += WRITE_BYTES;
    }
  })();
  return {
    async stop() {
      writing = false;
      await done;
    },
    written: () => written,
  };
}

async function cycleCounts(t: TwoSites): Promise<{ failed: RecordedEvent[]; committed: number; merged: number }> {
  const store = getSqliteEventStore({ path: join(t.siteB, "ledger.sqlite"), create: false });
  try {
    const events = await store.readStream(relationshipStream("vm1"));
    return {
      failed: events.filter((e) => e.type === "CycleFailed"),
      committed: events.filter((e) => e.type === "CycleCommitted").length,
      merged: events.filter((e) => e.type === "RecoveryPointMerged").length,
    };
  } finally {
    await store.close();
  }
}

describe("soak: continuous replication with a writing guest and a test failover", () => {
  it(
    `runs ${MINUTES} min without errors or leaks`,
    async () => {
      const t = await newTwoSites("qr-soak-", { diskBytes: REGION + 64 * MiB, intervalSeconds: 1 });
      const site = await t.startSite(t.siteB);
      const address = readFileSync(addressFile(t.siteB), "utf8").trim();
      writeAgentConfigWithSpec(t, address);
      const agent = startDaemon(AGENT, ["--config", t.agentConfig], join(t.dir, "agent.log"));
      t.daemons.push(agent);
      await waitFor("the initial replication", async () => ((await t.relationship()).points.length > 0 ? true : undefined), 120_000);

      const nbd = await NbdClient.connect({ socketPath: t.vm.nbdSocketPath, exportName: "guest-vda" });
      const writer = steadyWriter(nbd);

      const siteQsd = () => {
        const f = join(t.siteB, "run", "storage-daemon.pid");
        return existsSync(f) ? Number(readFileSync(f, "utf8").trim()) : undefined;
      };
      const sampler = new ProcessSampler();
      let testVmPid: number | undefined;
      const sampleAll = () => {
        sampler.take("site B (node)", site.child.pid);
        sampler.take("agent (node)", agent.child.pid);
        sampler.take("primary qemu-storage-daemon", t.vm.proc.pid);
        sampler.take("site B qemu-storage-daemon", siteQsd());
        sampler.take("test failover qemu-system", testVmPid);
      };

      const client = controlClientAs(address, t.admin(t.siteB));
      const started = Date.now();
      const end = started + MINUTES * 60_000;
      const seqAtStart = (await t.relationship()).lastCycleSeq;
      let test: { started: number; stopped?: number; seqAtStart: number; seqAtStop?: number } | undefined;
      try {
        while (Date.now() < end) {
          sampleAll();
          for (const d of [site, agent]) expect(d.child.exitCode, "a qreplica process exited during the soak").toBeNull();
          const elapsed = Date.now() - started;
          if (!test && elapsed >= (MINUTES * 60_000) / 2 - 15_000) {
            const r = await call(client, client.startTestFailover, { vmId: "vm1", recoveryPointId: "" }, 120_000);
            testVmPid = r.vm?.pid;
            test = { started: Date.now(), seqAtStart: (await t.relationship()).lastCycleSeq };
          } else if (test && !test.stopped && Date.now() - test.started >= 30_000) {
            await call(client, client.stopTestFailover, { vmId: "vm1", testId: "" }, 60_000);
            test.stopped = Date.now();
            test.seqAtStop = (await t.relationship()).lastCycleSeq;
            testVmPid = undefined;
          }
          await sleep(SAMPLE_MS);
        }
      } finally {
        await writer.stop();
        client.close();
      }
      const stoppedAt = Date.now();
      await waitFor(
        "a point cut after the writes stopped",
        async () => ((await t.relationship()).points.some((p) => Date.parse(p.cutoffAt) > stoppedAt) ? true : undefined),
        120_000,
      );
      await nbd.disconnect();
      sampleAll();

      // The report: every process's trend, over the samples after the first 20 s (start-up and the
      // initial replication's buffers are not a trend).
      const trends = sampler.trends(started + 20_000, (name) => name.startsWith("test"));
      const state = await t.relationship();
      const { failed, committed, merged } = await cycleCounts(t);
      const report = {
        minutes: MINUTES,
        writtenMiB: writer.written() / MiB,
        cyclesCommitted: committed,
        cyclesFailed: failed.length,
        pointsMerged: merged,
        pointsKept: state.points.length,
        testFailover: test && { seconds: ((test.stopped ?? 0) - test.started) / 1000, cyclesDuring: (test.seqAtStop ?? 0) - test.seqAtStart },
        processes: trends,
      };
      console.log(
        `soak ${MINUTES} min: ${report.writtenMiB.toFixed(0)} MiB written, ${committed} cycles committed, ${failed.length} failed, ${merged} points merged, ${state.points.length} kept; ` +
          `test failover ${report.testFailover?.seconds.toFixed(0)} s with ${report.testFailover?.cyclesDuring} cycles during it\n` +
          trends.map(formatTrend).join("\n"),
      );
      if (process.env.QR_SOAK_REPORT) writeFileSync(process.env.QR_SOAK_REPORT, JSON.stringify(report, null, 2) + "\n");

      // No errors.
      expect(failed.map((e) => e.data)).toEqual([]);
      expect(errorLines(join(t.siteB, "site.log"))).toEqual([]);
      expect(errorLines(join(t.dir, "agent.log"))).toEqual([]);
      expect(state.state).toBe("replicating");
      // Replication went on all along, through the test failover too.
      expect(state.lastCycleSeq - seqAtStart).toBeGreaterThanOrEqual(MINUTES * 10);
      expect(test?.stopped).toBeDefined();
      expect(report.testFailover!.cyclesDuring).toBeGreaterThanOrEqual(3);
      expect(trends.find((x) => x.name.startsWith("test"))?.samples ?? 0).toBeGreaterThan(0);
      // No leaks: descriptors come back to where they were; memory does not run away.
      for (const tr of trends.filter((x) => !x.name.startsWith("test"))) {
        expect(tr.fds.last, `${tr.name}: open fds`).toBeLessThanOrEqual(tr.fds.first + 8);
        expect(tr.rssMiB.last - tr.rssMiB.first, `${tr.name}: RSS growth (MiB)`).toBeLessThan(128);
      }
      // The last point is the primary, byte for byte (nothing wrote after its cut-off).
      const primary = join(t.dir, "primary-final.raw");
      await convertImage(t.vm.guestUri("vda"), primary, { srcFormat: "raw", dstFormat: "raw" });
      const newest = state.points.at(-1)!;
      const cmp = await compareImages(newest.disks[0]!.imagePath, primary, { formatA: "qcow2", formatB: "raw" });
      expect(cmp.detail).toMatch(/identical/i);
    },
    (MINUTES * 60 + 600) * 1000,
  );
});
