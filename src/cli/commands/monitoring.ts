import { InvalidArgumentError, type Command } from "commander";
import type { MeasureResponse } from "../../gen/qreplica/v1/monitoring.js";
import { monitoringClient, unary } from "../siteClient.js";
import { formatBytes } from "../table.js";
import { emit, fail } from "../output.js";
import { withTarget, type Target } from "../target.js";

import { healthName, reasonJson, stateName } from "../jsonView.js";

/** "90", "90s", "15m", "1h", "1h30m", "1d": seconds. */
export function parseDuration(v: string): number {
  const m = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$/.exec(v.trim());
  const secs = m ? Number(m[1] ?? 0) * 86400 + Number(m[2] ?? 0) * 3600 + Number(m[3] ?? 0) * 60 + Number(m[4] ?? 0) : NaN;
  if (!m || !(secs > 0)) throw new InvalidArgumentError(`'${v}' is not a duration: give e.g. 90s, 15m, 1h or 1h30m`);
  return secs;
}

const iso = (d: Date | undefined) => (d ? d.toISOString() : null);
const seconds = (d: { seconds: bigint; nanos: number } | undefined) => (d ? Number(d.seconds) + d.nanos / 1e9 : null);

/** The JSON document of `measure --json`: every field present, null where unknown. */
export function measurementJson(m: MeasureResponse) {
  return {
    vmId: m.vmId,
    state: stateName(m.state),
    health: healthName(m.health),
    healthReasons: m.healthReasons.map(reasonJson),
    monitoringStartTime: iso(m.monitoringStartTime),
    monitoringEndTime: iso(m.monitoringEndTime),
    lastReplicationTime: iso(m.lastReplicationTime),
    newestPointCutoffTime: iso(m.newestPointCutoffTime),
    newestPointAgeSeconds: seconds(m.newestPointAge),
    pendingReplicationBytes: m.pendingReplicationBytes === undefined ? null : Number(m.pendingReplicationBytes),
    averageReplicationBytes: Number(m.averageReplicationBytes),
    maxReplicationBytes: Number(m.maxReplicationBytes),
    averageTransferredBytes: Number(m.averageTransferredBytes),
    maxTransferredBytes: Number(m.maxTransferredBytes),
    averageReplicationLatencySeconds: m.averageReplicationLatencySeconds,
    maxReplicationLatencySeconds: m.maxReplicationLatencySeconds,
    replicationSuccessCount: Number(m.replicationSuccessCount),
    replicationMissCount: Number(m.replicationMissCount),
    replicationFailureCount: Number(m.replicationFailureCount),
    lastTestFailoverTime: iso(m.lastTestFailoverTime),
    frequencySeconds: m.frequencySeconds,
    rpoAlertSeconds: m.rpoAlertSeconds,
    agentConnected: m.agentConnected,
  };
}

export function registerMonitoring(program: Command): void {
  withTarget(
    program
      .command("measure <vm>")
      .description("replication statistics of a VM over a monitoring window (Hyper-V's Measure-VMReplication): health and reasons, sizes, latencies, successes, misses, failures"),
  )
    .option("--window <duration>", "the monitoring window, ending now (e.g. 15m, 1h, 24h; at most 24h); default: the site's (1h)", parseDuration)
    .action(async (vm: string, o: Target & { window?: number }) => {
      try {
        const client = monitoringClient(o);
        const res = await unary(client, client.measure, { vmId: vm, window: o.window ? { seconds: BigInt(Math.floor(o.window)), nanos: 0 } : undefined });
        client.close();
        const m = measurementJson(res);
        emit(o.json, m, () => formatMeasurement(m));
      } catch (err) {
        fail(err, o.json);
      }
    });
}

function formatMeasurement(m: ReturnType<typeof measurementJson>): string {
  const s = (n: number | null) => (n === null ? "-" : `${Math.round(n * 10) / 10} s`);
  const rows: Array<[string, string]> = [
    ["VM", m.vmId],
    ["State", m.state],
    ["Health", m.health],
    ...m.healthReasons.map((r): [string, string] => [`  ${r.level}`, `${r.code}: ${r.message}`]),
    ["Monitoring window", `${m.monitoringStartTime} .. ${m.monitoringEndTime}`],
    ["Last replication", m.lastReplicationTime ?? "-"],
    ["Newest point", m.newestPointCutoffTime ? `${m.newestPointCutoffTime} (${s(m.newestPointAgeSeconds)} old)` : "-"],
    ["Pending size", m.pendingReplicationBytes === null ? "unknown" : formatBytes(m.pendingReplicationBytes)],
    [
      "Average / max size",
      `${formatBytes(m.averageReplicationBytes)} / ${formatBytes(m.maxReplicationBytes)} (sent ${formatBytes(m.averageTransferredBytes)} / ${formatBytes(m.maxTransferredBytes)})`,
    ],
    ["Average / max latency", `${s(m.averageReplicationLatencySeconds)} / ${s(m.maxReplicationLatencySeconds)}`],
    ["Successful / missed / failed", `${m.replicationSuccessCount} / ${m.replicationMissCount} / ${m.replicationFailureCount}`],
    ["Last test failover", m.lastTestFailoverTime ?? "-"],
    ["Frequency / RPO alert", `${m.frequencySeconds} s / ${m.rpoAlertSeconds} s`],
    ["Agent connected", m.agentConnected ? "yes" : "no"],
  ];
  const w = Math.max(...rows.map((r) => r[0].length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join("\n");
}
