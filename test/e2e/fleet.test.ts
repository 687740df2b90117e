/**
 * A fleet on one agent and one site (the 50-VM acceptance in miniature, sized for CI): every VM
 * its own qemu-storage-daemon, changing data every interval. Cut-offs keep each VM's cadence and
 * spread over the interval, no VM overlaps itself, no slot is missed, every VM is Normal. Then the
 * replica's storage stalls for five intervals: slots are missed, counted (agent metrics, site
 * health CYCLES_MISSED) and never queued.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ReplicationHealth } from "../../src/gen/qreplica/v1/control.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { waitFor } from "../helpers/processes.js";
import { call, controlClientAs } from "../helpers/controlPlane.js";
import { logTail } from "../helpers/crashGuest.js";
import { fleetAgentMetricsAddress, fleetCommits, startFleet, startFleetAgent, writeEverywhere } from "../helpers/fleet.js";
import { twoSitesPerTest } from "../helpers/twoSites.js";
import { parsePrometheusText, sampleValue } from "../helpers/promText.js";

const MiB = 1024 * 1024;
const VMS = 10;
const FREQ = 4;
const HEALTH = { evaluateEverySeconds: 1, frequencySeconds: FREQ, rpoAlertSeconds: 60, silentAfterSeconds: 30, windowSeconds: 60 };
const setup = twoSitesPerTest();

describe("a fleet on one agent and one site", { timeout: 600_000 }, () => {
  it("keeps every VM's cadence with no overlap and no miss; a forced slowdown's misses are counted, not queued", async () => {
    const t = await setup("qr-fleet-", { diskBytes: 16 * MiB, intervalSeconds: FREQ });
    const siteJson = join(t.siteB, "site.json");
    writeFileSync(siteJson, JSON.stringify({ ...(JSON.parse(readFileSync(siteJson, "utf8")) as object), health: HEALTH }, null, 2));
    await t.startSite(t.siteB);
    const fleet = await startFleet(t, VMS, 32 * MiB);
    const data = randomBytes(16 * MiB);
    const diag = () => `\n--- agent ---\n${logTail(join(t.dir, "fleet-agent.log"))}\n--- site-b ---\n${logTail(join(t.siteB, "site.log"))}`;
    const ids = fleet.ids;
    let round = 0;
    let writing = true;
    const writeBytes = 1 * MiB;
    const writer = (async () => {
      while (writing) {
        await writeEverywhere(fleet, writeBytes, round++, data);
        await new Promise((r) => setTimeout(r, FREQ * 1000));
      }
    })();
    try {
      startFleetAgent(t, fleet, { intervalSeconds: FREQ, maxCyclesInFlight: 4 });
      // Every VM past its initial replication, then a measured stretch of steady state.
      await waitFor(
        "every VM's initial replication",
        async () => ((await Promise.all(ids.map((id) => fleetCommits(t, id)))).every((c) => c.length >= 2) ? true : undefined),
        240_000,
      ).catch((e: Error) => {
        throw new Error(e.message + diag());
      });
      const from = Date.now();
      await waitFor("eight more intervals", () => (Date.now() - from > 8 * FREQ * 1000 ? true : undefined), 120_000, 500);

      const admin = controlClientAs(readFileSync(addressFile(t.siteB), "utf8").trim(), t.admin(t.siteB));
      const phases: number[] = [];
      for (const id of ids) {
        const steady = (await fleetCommits(t, id)).filter((c) => c.kind === "incremental" && Date.parse(c.cutoffAt) >= from);
        expect(steady.length, id).toBeGreaterThanOrEqual(6);
        for (let i = 1; i < steady.length; i++) {
          const gap = Date.parse(steady[i]!.cutoffAt) - Date.parse(steady[i - 1]!.cutoffAt);
          // On the VM's grid, one interval apart: no miss (a gap of 2 intervals), no drift.
          expect(Math.abs(gap - FREQ * 1000), `${id}: cut-offs ${steady[i - 1]!.cutoffAt} -> ${steady[i]!.cutoffAt}`).toBeLessThan(FREQ * 500);
          // No overlap: a VM's cycle starts after its previous one was committed.
          expect(Date.parse(steady[i]!.cutoffAt), `${id} overlap`).toBeGreaterThanOrEqual(Date.parse(steady[i - 1]!.committedAt));
        }
        phases.push((Date.parse(steady[0]!.cutoffAt) % (FREQ * 1000)) / (FREQ * 1000));
      }
      // Spread: the VMs' cut-offs do not fire together (at most half of them in any tenth of the interval).
      const buckets = new Array(10).fill(0) as number[];
      for (const p of phases) buckets[Math.floor(p * 10)]!++;
      expect(Math.max(...buckets)).toBeLessThanOrEqual(VMS / 2);
      const status = await call(admin, admin.getStatus, {});
      for (const r of status.relationships.filter((x) => ids.includes(x.vmId))) {
        expect(r.health, `${r.vmId}: ${r.healthReasons.map((x) => x.code).join(", ")}`).toBe(ReplicationHealth.REPLICATION_HEALTH_NORMAL);
      }

      // Forced slowdown: the replica's storage stalls for five intervals (SIGSTOP of the site's
      // qemu-storage-daemon). Four cycles hang in flight, overrunning their VMs' slots; the other
      // VMs wait for a permit past theirs. Every passed slot is counted missed, none is queued.
      const metricsAt = await waitFor("the agent's metrics address", () => fleetAgentMetricsAddress(t), 60_000);
      const missedTotal = async () => {
        const m = parsePrometheusText(await (await fetch(`http://${metricsAt}/metrics`)).text());
        return ids.reduce((n, id) => n + (sampleValue(m, "qreplica_agent_cycle_slots_missed_total", "qreplica_agent_cycle_slots_missed_total", { vm: id }) ?? 0), 0);
      };
      expect(await missedTotal()).toBe(0);
      const storagePid = Number(readFileSync(join(t.siteB, "run", "storage-daemon.pid"), "utf8").trim());
      process.kill(storagePid, "SIGSTOP");
      const stalledAt = Date.now();
      try {
        await waitFor("five stalled intervals", () => (Date.now() - stalledAt > 5 * FREQ * 1000 ? true : undefined), 60_000, 250);
      } finally {
        process.kill(storagePid, "SIGCONT");
      }
      const resumedAt = Date.now();
      await waitFor("every VM's misses counted by the agent", async () => ((await missedTotal()) >= 3 * VMS ? true : undefined), 120_000).catch((e: Error) => {
        throw new Error(e.message + diag());
      });
      const warned = await waitFor(
        "VMs in Warning with CYCLES_MISSED",
        async () => {
          const s = await call(admin, admin.getStatus, {});
          const w = s.relationships.filter(
            (r) => ids.includes(r.vmId) && r.health === ReplicationHealth.REPLICATION_HEALTH_WARNING && r.healthReasons.some((x) => x.code === "CYCLES_MISSED"),
          );
          return w.length >= VMS / 2 ? w : undefined;
        },
        120_000,
      );
      expect(warned[0]!.healthReasons.find((x) => x.code === "CYCLES_MISSED")?.message).toMatch(/\d+ of \d+ cycles due/);
      // Never queued: after the stall each VM is back on its cadence, with no catch-up burst of
      // back-to-back cycles and still no overlap.
      await waitFor("three intervals after the stall", () => (Date.now() - resumedAt > 3 * FREQ * 1000 ? true : undefined), 60_000, 250);
      for (const id of ids) {
        const cs = (await fleetCommits(t, id)).filter((c) => c.kind === "incremental" && Date.parse(c.cutoffAt) >= stalledAt);
        for (let i = 1; i < cs.length; i++) {
          expect(Date.parse(cs[i]!.cutoffAt), `${id} overlap`).toBeGreaterThanOrEqual(Date.parse(cs[i - 1]!.committedAt));
          expect(Date.parse(cs[i]!.cutoffAt) - Date.parse(cs[i - 1]!.cutoffAt), `${id}: catch-up burst`).toBeGreaterThanOrEqual(FREQ * 400);
        }
      }
      admin.close();
    } finally {
      writing = false;
      await writer.catch(() => undefined);
      for (const c of fleet.clients) await c.disconnect().catch(() => undefined);
    }
  });
});
