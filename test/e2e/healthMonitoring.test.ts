/**
 * Health, statistics and metrics against real processes: a site and an agent replicating a
 * qemu-storage-daemon VM. A stopped agent misses cycles (Warning, CYCLES_MISSED), a killed agent
 * goes silent (Critical, AGENT_SILENT), a dead replica storage fails cycles (Warning, then
 * Critical REPLICATION_FAILED); each transition is a HealthChanged event that `events --follow`
 * prints. `measure --json` has every field; /metrics of site and agent parse as Prometheus text;
 * an agent certificate is refused on Measure and the refusal audited.
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { stringify as toYaml } from "yaml";
import { describe, expect, it } from "vitest";
import { ReplicationHealth, type RelationshipStatus } from "../../src/gen/qreplica/v1/control.js";
import { MonitoringServiceClient } from "../../src/gen/qreplica/v1/monitoring.js";
import { runTool } from "../../src/qemu/processes/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { channelCredentials, grpcChannelOptions, loadSiteCredentials } from "../../src/transport/index.js";
import { AGENT, CLI, cliJson, runCli, startDaemon, waitFor, type Daemon } from "../helpers/processes.js";
import { call, controlClientAs } from "../helpers/controlPlane.js";
import { logTail } from "../helpers/crashGuest.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";
import { parsePrometheusText, sampleValue } from "../helpers/promText.js";

const MiB = 1024 * 1024;
const setup = twoSitesPerTest();
const FREQ = 2;
const HEALTH = { evaluateEverySeconds: 1, frequencySeconds: FREQ, rpoAlertSeconds: 20, silentAfterSeconds: 15, windowSeconds: 40 };

/** The address a daemon logged for its /metrics endpoint (it listens on port 0). */
function metricsAddress(logFile: string): string | undefined {
  for (const line of readFileSync(logFile, "utf8").split("\n")) {
    if (!line.includes("metrics endpoint serving")) continue;
    return (JSON.parse(line) as { address: string }).address;
  }
  return undefined;
}

async function scrape(address: string) {
  const res = await fetch(`http://${address}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
  return parsePrometheusText(await res.text());
}

function startAgent(t: TwoSites): Daemon {
  const config = join(t.dir, "health-agent.yaml");
  writeFileSync(
    config,
    toYaml({
      siteId: "site-a",
      stateDir: join(t.dir, "health-agent-state"),
      metricsListen: "127.0.0.1:0",
      tls: { caFile: join(t.caDir, "ca.crt"), certFile: join(t.dir, "agent-tls", "agent-a.crt"), keyFile: join(t.dir, "agent-tls", "agent-a.key") },
      vms: [
        {
          id: "vm1",
          qmpSocket: t.vm.qmpSocketPath,
          nbdSocket: t.vm.nbdSocketPath,
          disks: [{ id: "vda", node: "node-vda" }],
          replicaSite: readFileSync(addressFile(t.siteB), "utf8").trim(),
          replicaSiteId: "site-b",
          intervalSeconds: FREQ,
          compressionLevel: 1,
        },
      ],
    }),
  );
  const d = startDaemon(AGENT, ["--config", config], join(t.dir, "health-agent.log"));
  t.daemons.push(d);
  return d;
}

describe("health and monitoring with a real site and agent", () => {
  it("missed cycles, a silent agent and failed cycles drive health as the rules say; measure and /metrics report it", async () => {
    const t = await setup("qr-health-", { diskBytes: 64 * MiB, intervalSeconds: FREQ });
    const siteJson = join(t.siteB, "site.json");
    writeFileSync(siteJson, JSON.stringify({ ...(JSON.parse(readFileSync(siteJson, "utf8")) as object), metricsListen: "127.0.0.1:0", health: HEALTH }, null, 2));
    await t.startSite(t.siteB);
    await t.vm.guestWrite("vda", ["write -P 0x11 0 4M"]);
    let agent = startAgent(t);
    const diag = () => `\n--- agent ---\n${logTail(join(t.dir, "health-agent.log"))}\n--- site-b ---\n${logTail(join(t.siteB, "site.log"))}`;
    const fail = (e: Error) => {
      throw new Error(e.message + diag());
    };

    const admin = controlClientAs(readFileSync(addressFile(t.siteB), "utf8").trim(), t.admin(t.siteB));
    const status = async (): Promise<RelationshipStatus> => (await call(admin, admin.getStatus, { vmId: "vm1" })).relationships[0]!;
    const codes = (s: RelationshipStatus) => s.healthReasons.map((r) => r.code);
    const until = (what: string, ok: (s: RelationshipStatus) => boolean, timeoutMs = 90_000) =>
      waitFor(
        what,
        async () => {
          const s = await status();
          return ok(s) ? s : undefined;
        },
        timeoutMs,
        250,
      ).catch(fail);

    // `events --follow` from the start: it must print the HealthChanged events as they are recorded.
    const follow = spawn(process.execPath, ["--import", "tsx", CLI, "events", "--follow", "--json", "--dir", t.siteB], {
      cwd: resolve(import.meta.dirname, "../.."),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let followed = "";
    follow.stdout.on("data", (d: Buffer) => (followed += d.toString()));
    const storageDir = join(t.siteB, "storage", "vm1", "vda");
    try {
      // 1. Replicating at the frequency: Normal.
      await waitFor("five points", async () => ((await t.relationship()).points.length >= 5 ? true : undefined), 120_000).catch(fail);
      await t.vm.guestWrite("vda", ["write -P 0x22 8M 2M"]);
      const normal = await until("Normal with a fresh point", (s) => s.health === ReplicationHealth.REPLICATION_HEALTH_NORMAL && s.lastRecoveryPoint !== undefined);
      expect(normal.healthReasons).toEqual([]);

      // status --watch --json: one JSON document per refresh, one per line, until interrupted.
      const watch = spawn(process.execPath, ["--import", "tsx", CLI, "status", "--watch", "1", "--json", "--dir", t.siteB], {
        cwd: resolve(import.meta.dirname, "../.."),
        stdio: ["ignore", "pipe", "pipe"],
      });
      let watched = "";
      watch.stdout.on("data", (d: Buffer) => (watched += d.toString()));
      const watchExit = new Promise<number | null>((r) => watch.once("exit", (code) => r(code)));
      await waitFor("three refreshes of status --watch", () => (watched.split("\n").filter(Boolean).length >= 3 ? true : undefined), 60_000);
      watch.kill("SIGINT");
      expect(await watchExit).toBe(0);
      const docs = watched
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { siteId: string; relationships: Array<{ vmId: string; healthReasons: unknown[] }> });
      expect(docs.length).toBeGreaterThanOrEqual(3);
      for (const d of docs) expect(d).toMatchObject({ siteId: "site-b", relationships: [{ vmId: "vm1", healthReasons: expect.any(Array) }] });
      const table = await runCli(["status", "--dir", t.siteB]);
      expect(table.stdout.split("\n")[0]).toMatch(/^vm\s+health\s+point age\s+policy\s+state/);
      expect(table.stdout).toMatch(/vm1\s+normal\s+\d+s\s+-\s+replicating/);

      // 2. measure --json: every field, sensible values.
      await waitFor("a cycle with the 2 MiB write", async () => ((await t.relationship()).points.length >= 7 ? true : undefined), 60_000).catch(fail);
      const m = await cliJson<Record<string, unknown>>(["measure", "vm1", "--window", "1h", "--dir", t.siteB]);
      const keys = [
        "vmId",
        "state",
        "health",
        "healthReasons",
        "monitoringStartTime",
        "monitoringEndTime",
        "lastReplicationTime",
        "newestPointCutoffTime",
        "newestPointAgeSeconds",
        "pendingReplicationBytes",
        "averageReplicationBytes",
        "maxReplicationBytes",
        "averageTransferredBytes",
        "maxTransferredBytes",
        "averageReplicationLatencySeconds",
        "maxReplicationLatencySeconds",
        "replicationSuccessCount",
        "replicationMissCount",
        "replicationFailureCount",
        "lastTestFailoverTime",
        "frequencySeconds",
        "rpoAlertSeconds",
        "agentConnected",
      ];
      expect(Object.keys(m).sort()).toEqual([...keys].sort());
      console.log(`measure: ${JSON.stringify(m)}`);
      expect(m).toMatchObject({
        vmId: "vm1",
        state: "replicating",
        frequencySeconds: FREQ,
        rpoAlertSeconds: 20,
        agentConnected: true,
        pendingReplicationBytes: null,
        lastTestFailoverTime: null,
        replicationFailureCount: 0,
      });
      expect(Date.parse(m.monitoringEndTime as string) - Date.parse(m.monitoringStartTime as string)).toBe(3600_000);
      expect(Date.parse(m.lastReplicationTime as string)).toBeGreaterThan(Date.parse(m.monitoringStartTime as string));
      expect(m.replicationSuccessCount as number).toBeGreaterThanOrEqual(7);
      // The initial 4 MiB (full) cycle is the largest; the 2 MiB write is one of the others.
      expect(m.maxReplicationBytes as number).toBeGreaterThanOrEqual(4 * MiB);
      expect(m.averageReplicationBytes as number).toBeGreaterThan(0);
      expect(m.averageReplicationBytes as number).toBeLessThanOrEqual(m.maxReplicationBytes as number);
      expect(m.maxTransferredBytes as number).toBeGreaterThan(0);
      expect(m.maxReplicationLatencySeconds as number).toBeGreaterThan(0);
      expect(m.averageReplicationLatencySeconds as number).toBeLessThanOrEqual(m.maxReplicationLatencySeconds as number);
      expect(m.newestPointAgeSeconds as number).toBeGreaterThanOrEqual(0);

      // 3. /metrics on both sides, with a plain HTTP client.
      const siteMetrics = await scrape(metricsAddress(join(t.siteB, "site.log"))!);
      expect(sampleValue(siteMetrics, "qreplica_vm_health", "qreplica_vm_health", { vm: "vm1", state: "normal" })).toBe(1);
      expect(sampleValue(siteMetrics, "qreplica_vm_agent_connected", "qreplica_vm_agent_connected", { vm: "vm1" })).toBe(1);
      expect(sampleValue(siteMetrics, "qreplica_site_cycles_total", "qreplica_site_cycles_total", { vm: "vm1", outcome: "committed" })).toBeGreaterThanOrEqual(7);
      expect(sampleValue(siteMetrics, "qreplica_site_cycle_duration_seconds", "qreplica_site_cycle_duration_seconds_count", { vm: "vm1" })).toBeGreaterThanOrEqual(7);
      expect(sampleValue(siteMetrics, "qreplica_vm_newest_point_age_seconds", "qreplica_vm_newest_point_age_seconds", { vm: "vm1" })).toBeGreaterThanOrEqual(0);
      const agentAddress = await waitFor("the agent's metrics address", () => metricsAddress(join(t.dir, "health-agent.log")), 30_000);
      const agentMetrics = await scrape(agentAddress);
      expect(sampleValue(agentMetrics, "qreplica_agent_cycles_total", "qreplica_agent_cycles_total", { vm: "vm1", outcome: "committed" })).toBeGreaterThanOrEqual(5);
      expect(sampleValue(agentMetrics, "qreplica_agent_read_bytes_total", "qreplica_agent_read_bytes_total", { vm: "vm1" })).toBeGreaterThanOrEqual(6 * MiB);
      expect(sampleValue(agentMetrics, "qreplica_agent_sent_bytes_total", "qreplica_agent_sent_bytes_total", { vm: "vm1" })).toBeGreaterThan(0);
      expect(agentMetrics.get("qreplica_agent_cycle_duration_seconds")?.type).toBe("histogram");
      expect(sampleValue(agentMetrics, "qreplica_agent_process_cpu_seconds_total", "qreplica_agent_process_cpu_seconds_total", {})).toBeGreaterThan(0);

      // 4. The agent's certificate is refused on Measure (data plane only), and the refusal audited.
      const asAgent = new MonitoringServiceClient(
        readFileSync(addressFile(t.siteB), "utf8").trim(),
        channelCredentials(
          loadSiteCredentials({ caFile: join(t.caDir, "ca.crt"), certFile: join(t.dir, "agent-tls", "agent-a.crt"), keyFile: join(t.dir, "agent-tls", "agent-a.key") }),
        ),
        grpcChannelOptions,
      );
      const refused = await new Promise<grpc.ServiceError | undefined>((r) => asAgent.measure({ vmId: "vm1" }, (err) => r(err ?? undefined)));
      asAgent.close();
      expect(refused?.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(refused?.details).toMatch(/'agent-a' \(role agent\) may not call Measure/);
      const audit = await cliJson<{ events: Array<{ type: string; data: { rpc: string; identity: string } }> }>(["events", "--audit", "--dir", t.siteB]);
      expect(audit.events.some((e) => e.type === "ControlCallRefused" && e.data.rpc === "Measure" && e.data.identity === "agent-a")).toBe(true);

      // 5. Missed cycles: the agent stopped (SIGSTOP) keeps its stream but cuts nothing. Its point
      // ages (POINT_LATE) and the misses pass 20% of the window: Warning, not yet Critical.
      agent.child.kill("SIGSTOP");
      const missed = await until("Warning with CYCLES_MISSED", (s) => codes(s).includes("CYCLES_MISSED"));
      expect(missed.health).toBe(ReplicationHealth.REPLICATION_HEALTH_WARNING);
      expect(codes(missed)).toContain("POINT_LATE");
      // Stopped until half the window's slots are missed: just past 20%, the first fresh point
      // after the restart would bring the ratio back under it at once.
      const missedRatio = (s: RelationshipStatus) => {
        const m = /(\d+) of (\d+) cycles due/.exec(s.healthReasons.find((r) => r.code === "CYCLES_MISSED")?.message ?? "");
        return m ? Number(m[1]) / Number(m[2]) : 0;
      };
      await until("half the window's cycles missed", (s) => missedRatio(s) >= 0.5);
      agent.child.kill("SIGCONT");
      // Running again: the point is fresh, the misses stay counted while they are in the window.
      // (Right after SIGCONT the agent's silence may still count until its next message: wait for Warning.)
      const recovering = await until(
        "fresh point, misses still counted, Warning",
        (s) => !codes(s).includes("POINT_LATE") && codes(s).includes("CYCLES_MISSED") && s.health === ReplicationHealth.REPLICATION_HEALTH_WARNING,
      );
      expect(recovering.health).toBe(ReplicationHealth.REPLICATION_HEALTH_WARNING);
      const mm = await cliJson<{ replicationMissCount: number }>(["measure", "vm1", "--dir", t.siteB]);
      expect(mm.replicationMissCount).toBeGreaterThanOrEqual(3);

      // 6. A silent agent (kill -9): Warning as its point ages, Critical once silent past the threshold.
      await agent.kill("SIGKILL");
      const silent = await until("Critical with AGENT_SILENT", (s) => codes(s).includes("AGENT_SILENT"), 60_000);
      expect(silent.health).toBe(ReplicationHealth.REPLICATION_HEALTH_CRITICAL);
      expect(silent.healthReasons.find((r) => r.code === "AGENT_SILENT")?.level).toBe(ReplicationHealth.REPLICATION_HEALTH_CRITICAL);
      // The gauges follow at the site's next periodic evaluation (every second here).
      const deadMetrics = await waitFor(
        "the critical health gauge",
        async () => {
          const f = await scrape(metricsAddress(join(t.siteB, "site.log"))!);
          return sampleValue(f, "qreplica_vm_health", "qreplica_vm_health", { vm: "vm1", state: "critical" }) === 1 ? f : undefined;
        },
        30_000,
      );
      expect(sampleValue(deadMetrics, "qreplica_vm_agent_connected", "qreplica_vm_agent_connected", { vm: "vm1" })).toBe(0);
      expect(sampleValue(deadMetrics, "qreplica_vm_health", "qreplica_vm_health", { vm: "vm1", state: "normal" })).toBe(0);

      // 7. Back: no Critical reason any more.
      agent = startAgent(t);
      await until(
        "no Critical reason after the agent is back",
        (s) => s.health !== ReplicationHealth.REPLICATION_HEALTH_CRITICAL && s.healthReasons.every((r) => r.level !== ReplicationHealth.REPLICATION_HEALTH_CRITICAL),
      );

      // 8. Failed cycles: the VM's storage directory made immutable, so no point can be created
      // there and every cycle fails on the site (a dead storage daemon would stop the site instead).
      // One failure is a Warning (the agent retries); three in a row are Critical.
      await runTool("chattr", ["+i", storageDir]);
      {
        const failing = await until("Warning or worse with CYCLE_FAILED or REPLICATION_FAILED", (s) => codes(s).some((c) => c === "CYCLE_FAILED" || c === "REPLICATION_FAILED"));
        expect(failing.health).not.toBe(ReplicationHealth.REPLICATION_HEALTH_NORMAL);
        const failed = await until("Critical with REPLICATION_FAILED", (s) => codes(s).includes("REPLICATION_FAILED"));
        expect(failed.health).toBe(ReplicationHealth.REPLICATION_HEALTH_CRITICAL);
        // measure evaluates on its own read: it agrees once it sees the same run of failures.
        const fm = await waitFor(
          "measure to report the failures as Critical",
          async () => {
            const m = await cliJson<{ replicationFailureCount: number; health: string }>(["measure", "vm1", "--dir", t.siteB]);
            return m.health === "critical" ? m : undefined;
          },
          60_000,
        );
        expect(fm.replicationFailureCount).toBeGreaterThanOrEqual(3);
      }

      // Every transition is in the ledger (only changes: no event per evaluation), and followed.
      const ledger = await cliJson<{ events: Array<{ type: string; stream: string; data: { from: string | null; to: string; reasons: Array<{ code: string }> } }> }>([
        "events",
        "--all",
        "--dir",
        t.siteB,
      ]);
      const changes = ledger.events.filter((e) => e.type === "HealthChanged");
      console.log(`health transitions: ${changes.map((c) => `${c.data.from ?? "-"}->${c.data.to} [${c.data.reasons.map((r) => r.code).join(",")}]`).join("  ")}`);
      expect(changes.every((c) => c.stream === "health-vm1" && c.data.from !== c.data.to)).toBe(true);
      const tos = changes.map((c) => c.data.to);
      expect(tos).toContain("warning");
      expect(tos).toContain("critical");
      expect(tos.at(-1)).toBe("critical");
      expect(changes.length).toBeLessThan(30);
      const onlyHealth = await cliJson<{ events: Array<{ type: string }> }>(["events", "vm1", "--health", "--all", "--dir", t.siteB]);
      expect(onlyHealth.events.map((e) => e.type)).toEqual(changes.map(() => "HealthChanged"));
      await waitFor(
        "events --follow printed the last HealthChanged",
        () => {
          const lines = followed
            .split("\n")
            .filter(Boolean)
            .map((l) => JSON.parse(l) as { type: string; data: { to: string } });
          const followedChanges = lines.filter((e) => e.type === "HealthChanged");
          return followedChanges.length === changes.length ? followedChanges : undefined;
        },
        30_000,
      );
    } finally {
      follow.kill("SIGINT");
      admin.close();
      // Step 8's immutable directory, also when a step failed: the test's files must be removable.
      await runTool("chattr", ["-i", storageDir]).catch(() => undefined);
    }
  }, 600_000);
});
