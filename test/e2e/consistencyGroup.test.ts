/**
 * Consistency groups (issue 13): two counter guests on one agent in one group. Each guest prints
 * its counter after each write (about 18 a second); the test samples both serial logs against the
 * host clock, so it knows each guest's counter at any instant within a tick or two. A group point
 * must hold, on both disks, the counters the guests had at the group's one cut-off instant (the
 * agent's stamps, which must fall inside the group's pause). Cut-offs a second apart would differ
 * by about 18 counts.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import { describe, expect, it } from "vitest";
import { readCounters, readDiskCounter, waitForCounter } from "../../guest/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import type { GroupPoint } from "../../src/site/groupPoints.js";
import { CrashGuest } from "../helpers/crashGuest.js";
import { AGENT, cliJson, runCli, startDaemon, waitFor, type Daemon } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";
import { parsePrometheusText, sampleValue } from "../helpers/promText.js";

/** The address the agent logged for its /metrics endpoint (it listens on port 0). */
function metricsAddress(logFile: string): string | undefined {
  const line = readFileSync(logFile, "utf8")
    .split("\n")
    .find((l) => l.includes("metrics endpoint serving"));
  return line ? (JSON.parse(line) as { address: string }).address : undefined;
}

const MiB = 1024 * 1024;
const newTwoSites = twoSitesPerTest();
const SPEC = { machine: "q35", cpus: 1, memoryMiB: 64, disks: [{ diskId: "vda", bus: "ide", bootIndex: 0 }], nics: [] };

function startGroupAgent(t: TwoSites, guests: Record<string, CrashGuest>): Daemon {
  const config = join(t.dir, "group-agent.yaml");
  writeFileSync(
    config,
    toYaml({
      siteId: "site-a",
      stateDir: join(t.dir, "group-agent-state"),
      metricsListen: "127.0.0.1:0",
      tls: { caFile: join(t.caDir, "ca.crt"), certFile: join(t.dir, "agent-tls", "agent-a.crt"), keyFile: join(t.dir, "agent-tls", "agent-a.key") },
      vms: Object.entries(guests).map(([id, g]) => ({
        id,
        qmpSocket: g.qmpSocketPath,
        nbdSocket: g.nbdSocketPath,
        disks: [{ id: "vda", node: "vda" }],
        replicaSite: readFileSync(addressFile(t.siteB), "utf8").trim(),
        replicaSiteId: "site-b",
        intervalSeconds: 1,
        compressionLevel: 1,
        spec: SPEC,
      })),
      groups: [{ id: "app1", vms: Object.keys(guests) }],
    }),
  );
  const d = startDaemon(AGENT, ["--config", config], join(t.dir, "group-agent.log"));
  t.daemons.push(d);
  return d;
}

/**
 * A guest's printed counter against the host clock: each sample is the last complete counter line
 * read at or after `at`. The disk holds the last printed counter or one more (the line follows the
 * write), and a guest's counter only grows.
 */
class CounterSampler {
  private readonly samples: Array<{ at: number; value: number }> = [];
  private readonly timer: NodeJS.Timeout;
  constructor(private readonly serialLog: string) {
    this.timer = setInterval(() => this.sample(), 20);
  }
  private sample(): void {
    const at = Date.now();
    const value = readCounters(this.serialLog).at(-1);
    if (value !== undefined) this.samples.push({ at, value });
  }
  stop(): void {
    clearInterval(this.timer);
  }
  /**
   * When the disk can have held `held`: after the last sample below held - 1, before the first
   * sample above it (the disk holds the printed counter or one more). A few ms of slack for the
   * read that follows each sample's clock reading.
   */
  window(held: number): { from: number; to: number } {
    const from = this.samples.filter((s) => s.value < held - 1).at(-1)?.at ?? Number.NEGATIVE_INFINITY;
    const to = this.samples.find((s) => s.value > held)?.at ?? Number.POSITIVE_INFINITY;
    return { from, to: to + 5 };
  }
  /** Bounds of the counter the disk held at any instant in [from, to]: a sample before, and one after (+1). */
  bounds(from: number, to: number): { low: number; high: number } {
    const before = this.samples.filter((s) => s.at <= from).at(-1);
    const after = this.samples.find((s) => s.at >= to);
    if (!before || !after) throw new Error(`no counter samples around ${new Date(from).toISOString()}..${new Date(to).toISOString()}`);
    return { low: before.value, high: after.value + 1 };
  }
}

describe("consistency group of two counter guests (real QEMU, sites, agent)", { timeout: 300_000 }, () => {
  it("every group point holds both disks at one cut-off; the group fails over (test and unplanned) to a group point; a viewer is refused", async () => {
    const t = await newTwoSites("qr-group-", { diskBytes: 8 * MiB });
    await t.startSite(t.siteB);
    const [g1, g2] = await Promise.all([CrashGuest.create(join(t.dir, "g1")), CrashGuest.create(join(t.dir, "g2"))]);
    // Stopped with the sites (after the test, pass or fail).
    for (const g of [g1, g2]) t.daemons.push({ child: g.proc!.child, exited: g.proc!.exited.then(() => null), kill: () => g.crash() });
    await Promise.all([waitForCounter(g1.serialLogPath, (v) => v > 3, 90_000), waitForCounter(g2.serialLogPath, (v) => v > 3, 90_000)]);
    const samplers = { vm1: new CounterSampler(g1.serialLogPath), vm2: new CounterSampler(g2.serialLogPath) };

    const agent = startGroupAgent(t, { vm1: g1, vm2: g2 });
    const groupPoints = async () => {
      const r = await runCli(["group", "points", "app1", "--dir", t.siteB, "--json"]);
      return r.code === 0 ? (JSON.parse(r.stdout) as GroupPoint[]) : [];
    };
    await waitFor("three group points", async () => ((await groupPoints()).length >= 3 ? true : undefined), 150_000);
    // The agent's metrics: group cut-offs counted and their pauses observed.
    const metricsAt = await waitFor("the agent's metrics address", () => metricsAddress(join(t.dir, "group-agent.log")), 30_000);
    const metrics = parsePrometheusText(await (await fetch(`http://${metricsAt}/metrics`)).text());
    expect(sampleValue(metrics, "qreplica_agent_group_cutoffs_total", "qreplica_agent_group_cutoffs_total", { group: "app1", outcome: "complete" })).toBeGreaterThanOrEqual(3);
    expect(sampleValue(metrics, "qreplica_agent_group_cutoff_pause_seconds", "qreplica_agent_group_cutoff_pause_seconds_count", { group: "app1" })).toBeGreaterThanOrEqual(3);
    expect(sampleValue(metrics, "qreplica_agent_cutoff_pause_seconds", "qreplica_agent_cutoff_pause_seconds_count", { vm: "vm2" })).toBeGreaterThanOrEqual(3);
    await agent.kill("SIGTERM");
    // A sample after the last cut-off's pause.
    await new Promise((r) => setTimeout(r, 200));
    for (const s of Object.values(samplers)) s.stop();

    const points = await groupPoints();
    const [rel1, rel2] = [await t.relationship("vm1"), await t.relationship("vm2")];
    const image = (rel: typeof rel1, pointId: string) => rel.points.find((p) => p.pointId === pointId)!.disks[0]!.imagePath;
    expect(points.length).toBeGreaterThanOrEqual(3);
    for (const gp of points) {
      expect(Object.keys(gp.members).sort()).toEqual(["vm1", "vm2"]);
      // Measured, and the members' cut-off stamps fall within the one pause.
      expect(gp.pauseMs).toBeGreaterThan(0);
      expect(gp.pauseMs).toBeLessThan(10_000);
      expect(new Date(gp.cutoffTo!).getTime() - new Date(gp.cutoffFrom!).getTime()).toBeLessThanOrEqual(Math.ceil(gp.pauseMs!) + 1);
      // The guests were stopped at most pauseMs before the first stamp and stayed stopped past the last.
      const from = new Date(gp.cutoffFrom!).getTime() - Math.ceil(gp.pauseMs!);
      const to = new Date(gp.cutoffTo!).getTime();
      const held = { vm1: await readDiskCounter(image(rel1, gp.members.vm1!)), vm2: await readDiskCounter(image(rel2, gp.members.vm2!)) };
      for (const vm of ["vm1", "vm2"] as const) {
        const b = samplers[vm].bounds(from, to);
        expect({ groupPoint: gp.groupPointId, vm, held: held[vm], atCutoff: held[vm] >= b.low && held[vm] <= b.high }).toEqual({
          groupPoint: gp.groupPointId,
          vm,
          held: held[vm],
          atCutoff: true,
        });
      }
      // One instant for both: the times each disk can have held its counter overlap. Cut-offs taken
      // apart (each guest paused on its own) would leave them a few hundred ms or more apart.
      const [w1, w2] = [samplers.vm1.window(held.vm1), samplers.vm2.window(held.vm2)];
      const overlapMs = Math.min(w1.to, w2.to) - Math.max(w1.from, w2.from);
      if (process.env.QR_DEBUG) console.log({ gp, held, w1, w2, overlapMs });
      expect({ groupPoint: gp.groupPointId, oneInstant: overlapMs >= 0 }).toEqual({ groupPoint: gp.groupPointId, oneInstant: true });
    }
    const newest = points.at(-1)!;
    const pointCounter = {
      vm1: await readDiskCounter(image(rel1, newest.members.vm1!)),
      vm2: await readDiskCounter(image(rel2, newest.members.vm2!)),
    };

    // A runbook naming the group: its plan pins each member to its point of the newest group point.
    const runbook = join(t.dir, "app.runbook.yaml");
    writeFileSync(runbook, toYaml({ name: "app", site: { dir: t.siteB }, failover: "unplanned", groups: [{ vms: [{ consistencyGroup: "app1" }] }] }));
    const plan = await cliJson<{ steps: Array<{ kind: string; vm?: string; point?: string }> }>(["runbook", "plan", runbook]);
    expect(plan.steps.filter((st) => st.kind === "failover").map((st) => [st.vm, st.point])).toEqual([
      ["vm1", newest.members.vm1],
      ["vm2", newest.members.vm2],
    ]);

    // A viewer may list group points but not fail the group over; nothing is started.
    const viewer = await cliJson<{ certFile: string; keyFile: string }>([
      "pki",
      "issue",
      "--ca-dir",
      t.caDir,
      "--name",
      "vic",
      "--role",
      "viewer",
      "--out-dir",
      join(t.dir, "vic"),
    ]);
    const asViewer = ["--site", readFileSync(addressFile(t.siteB), "utf8").trim(), "--ca", join(t.caDir, "ca.crt"), "--cert", viewer.certFile, "--key", viewer.keyFile];
    expect((await runCli(["group", "points", "app1", ...asViewer, "--json"])).code).toBe(0);
    const refused = await runCli(["group", "failover", "app1", "--test", ...asViewer, "--json"]);
    expect(refused.code).not.toBe(0);
    expect(refused.stdout).toMatch(/operator/);
    expect(Object.keys((await t.relationship("vm1")).testFailovers)).toEqual([]);
    expect(Object.keys((await t.relationship("vm2")).testFailovers)).toEqual([]);

    // Test failover of the whole group to its newest group point: each VM boots its member's point.
    type Started = { groupPointId: string; members: Array<{ vmId: string; recoveryPointId: string; vm: { serialLog: string } }> };
    const test = await cliJson<Started>(["group", "failover", "app1", "--test", "--point", newest.groupPointId, "--dir", t.siteB]);
    expect(test.groupPointId).toBe(newest.groupPointId);
    for (const m of test.members) {
      expect(m.recoveryPointId).toBe(newest.members[m.vmId]);
      await waitForCounter(m.vm.serialLog, () => true, 90_000);
      expect(readCounters(m.vm.serialLog)[0]).toBe(pointCounter[m.vmId as "vm1" | "vm2"]);
    }
    await cliJson(["group", "test-stop", "app1", "--dir", t.siteB]);
    expect(Object.keys((await t.relationship("vm1")).testFailovers)).toEqual([]);

    // Unplanned failover of the group (the primary's agent is gone): both VMs start from the group point.
    const fo = await cliJson<Started>(["group", "failover", "app1", "--unplanned", "--dir", t.siteB]);
    expect(fo.groupPointId).toBe(newest.groupPointId);
    expect(fo.members.map((m) => m.vmId).sort()).toEqual(["vm1", "vm2"]);
    for (const m of fo.members) {
      await waitForCounter(m.vm.serialLog, () => true, 90_000);
      expect(readCounters(m.vm.serialLog)[0]).toBe(pointCounter[m.vmId as "vm1" | "vm2"]);
      expect((await t.relationship(m.vmId)).state).toBe("failed-over-waiting-completion");
    }
  });
});
