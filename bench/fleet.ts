import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ReplicationHealth } from "../src/gen/qreplica/v1/control.js";
import { addressFile } from "../src/site/siteConfig.js";
import { call, controlClientAs } from "../test/helpers/controlPlane.js";
import { fleetAgentMetricsAddress, fleetCommits, startFleet, startFleetAgent, writeEverywhere, type Fleet } from "../test/helpers/fleet.js";
import { runCli, waitFor } from "../test/helpers/processes.js";
import { parsePrometheusText, sampleValue } from "../test/helpers/promText.js";
import { setupTwoSites, type TwoSites } from "../test/helpers/twoSites.js";
import { benchScratch } from "./lib/cleanup.js";
import { cpuSeconds } from "./lib/procStats.js";
import type { BenchContext, BenchResult } from "./report.js";

const MiB = 1024 * 1024;
const FREQ = 30;
/** vSphere Replication's 5-minute RPO is capped at 100-500 VMs per appliance; the issue asks 200 on 2 cores. */
const GOAL_VMS = 200;

const cpu = (pid: number) => {
  const c = cpuSeconds(pid);
  return c.user + c.system;
};

async function missedSlots(address: string, ids: readonly string[]): Promise<number> {
  const m = parsePrometheusText(await (await fetch(`http://${address}/metrics`)).text());
  return ids.reduce((n, id) => n + (sampleValue(m, "qreplica_agent_cycle_slots_missed_total", "qreplica_agent_cycle_slots_missed_total", { vm: id }) ?? 0), 0);
}

/** Per VM, over the measured window: cut-offs, and slots without one (gaps of more than one interval). */
async function windowCounts(t: TwoSites, fleet: Fleet, from: number, to: number): Promise<Map<string, { cutoffs: number; missed: number }>> {
  const out = new Map<string, { cutoffs: number; missed: number }>();
  for (const id of fleet.ids) {
    const cuts = (await fleetCommits(t, id))
      .filter((c) => c.kind === "incremental")
      .map((c) => Date.parse(c.cutoffAt))
      .filter((x) => x >= from && x <= to);
    let missed = 0;
    for (let i = 1; i < cuts.length; i++) missed += Math.max(0, Math.round((cuts[i]! - cuts[i - 1]!) / (FREQ * 1000)) - 1);
    out.set(id, { cutoffs: cuts.length, missed });
  }
  return out;
}

/**
 * fleet: N VMs (qemu-storage-daemon each, 16 MiB disks) on one agent and one site under a 30 s
 * policy, each VM changing 1 MiB per cycle; after every initial replication, four intervals are
 * measured. A VM is held when it had a cut-off every interval (no miss by the site's ledger nor
 * by the agent's scheduler) and is Normal. The value is the number held; the baseline is the
 * issue's goal of 200 VMs on 2 cores.
 */
export async function fleet(ctx: BenchContext): Promise<BenchResult[]> {
  // QR_FLEET_VMS / QR_FLEET_INTERVALS run other sizes (e.g. the 50 VMs for 5 minutes: 50 and 10).
  const count = Number(process.env.QR_FLEET_VMS ?? (ctx.quick ? 40 : GOAL_VMS));
  const intervals = Number(process.env.QR_FLEET_INTERVALS ?? (ctx.quick ? 2 : 4));
  const { dir, cleanup } = benchScratch("qr-bench-fleet-", ctx.log);
  try {
    const t = await setupTwoSites(dir, { diskBytes: 16 * MiB, intervalSeconds: FREQ });
    cleanup.defer("stop sites, agent and VMs", () => t.stopAll());
    await t.startSite(t.siteB);
    const policy = join(dir, "fleet.yaml");
    writeFileSync(policy, `name: fleet\nfrequency: ${FREQ}s\nretention: { minPoints: 4 }\nrpoAlert: 5m\n`);
    const applied = await runCli(["policy", "apply", policy, "--dir", t.siteB]);
    if (applied.code !== 0) throw new Error(`policy apply failed: ${applied.stderr}${applied.stdout}`);
    ctx.log(`starting ${count} VMs`);
    const vms = await startFleet(t, count, 16 * MiB);
    const data = randomBytes(1 * MiB);
    let writing = true;
    let round = 0;
    const writer = (async () => {
      while (writing) {
        await writeEverywhere(vms, 1 * MiB, round++, data);
        await new Promise((r) => setTimeout(r, FREQ * 1000));
      }
    })();
    try {
      const agent = startFleetAgent(t, vms, { intervalSeconds: FREQ, maxCyclesInFlight: 4, policy: "fleet" });
      const site = t.daemons.find((d) => d.child.spawnargs.includes("serve"))!;
      const started = Date.now();
      await waitFor(
        "every VM's initial replication and first incremental",
        async () => {
          const done = (await Promise.all(vms.ids.map((id) => fleetCommits(t, id)))).filter((c) => c.some((x) => x.kind === "incremental")).length;
          return done === count ? true : undefined;
        },
        1800_000,
        2000,
      );
      ctx.log(`${count} VMs replicating after ${((Date.now() - started) / 1000).toFixed(0)} s`);
      const metrics = fleetAgentMetricsAddress(t)!;
      const missed0 = await missedSlots(metrics, vms.ids);
      const cpu0 = { agent: cpu(agent.child.pid!), site: cpu(site.child.pid!) };
      const from = Date.now();
      await waitFor(`${intervals} measured intervals`, () => (Date.now() - from > intervals * FREQ * 1000 ? true : undefined), 3600_000, 1000);
      const to = Date.now();
      const agentCpu = cpu(agent.child.pid!) - cpu0.agent;
      const siteCpu = cpu(site.child.pid!) - cpu0.site;
      const agentMissed = (await missedSlots(metrics, vms.ids)) - missed0;
      const counts = await windowCounts(t, vms, from, to);
      const admin = controlClientAs(readFileSync(addressFile(t.siteB), "utf8").trim(), t.admin(t.siteB));
      const status = await call(admin, admin.getStatus, {});
      admin.close();
      const normal = new Set(status.relationships.filter((r) => r.health === ReplicationHealth.REPLICATION_HEALTH_NORMAL).map((r) => r.vmId));
      const held = vms.ids.filter((id) => normal.has(id) && counts.get(id)!.missed === 0 && counts.get(id)!.cutoffs >= intervals - 1).length;
      const cuts = [...counts.values()].reduce((n, c) => n + c.cutoffs, 0);
      const ledgerMissed = [...counts.values()].reduce((n, c) => n + c.missed, 0);
      const notes = `${cuts} cut-offs in ${((to - from) / 1000).toFixed(0)} s, missed: ${ledgerMissed} by the ledger, ${agentMissed} by the agent; ${normal.size} Normal; agent ${agentCpu.toFixed(1)} CPU-s, site ${siteCpu.toFixed(1)} CPU-s over the window`;
      ctx.log(notes);
      return [
        {
          name: "fleet",
          description: `${count} VMs on one agent and one site at a ${FREQ} s policy, 1 MiB changed per VM per cycle, ${intervals} intervals measured (${notes}); VMs held with no missed cycle and Normal`,
          value: held,
          unit: "VMs",
          baseline: GOAL_VMS,
          baselineDescription: "the issue's goal on 2 cores (vSphere Replication: 100-500 VMs per appliance at a 5-minute RPO)",
          ratio: held / GOAL_VMS,
          goal: `>= ${GOAL_VMS} VMs`,
        },
      ];
    } finally {
      writing = false;
      await writer.catch(() => undefined);
      for (const c of vms.clients) await c.disconnect().catch(() => undefined);
    }
  } finally {
    await cleanup.runAll();
  }
}
