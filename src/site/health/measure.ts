/**
 * Statistics of one VM over a monitoring window, with Hyper-V's Measure-VMReplication fields
 * (StartStatisticTime, ReplicationSize, ReplicationLatency, ReplicationMissCount, ...). Pure.
 */
import type { ReplicationStateName } from "../../ledger/domain/states.js";
import { countCycles, type CycleRecord, type HealthLevel, type HealthReason, type HealthResult, type HealthThresholds } from "./rules.js";

export interface Measurement {
  vmId: string;
  state: ReplicationStateName;
  health: HealthLevel;
  healthReasons: HealthReason[];
  monitoringStartTime: string;
  monitoringEndTime: string;
  windowSeconds: number;
  /** When the newest cycle was committed on the site (Hyper-V's LastReplicationTime). */
  lastReplicationTime: string | null;
  newestPointCutoffTime: string | null;
  newestPointAgeSeconds: number | null;
  /**
   * Changes on the primary not yet replicated. The site cannot know them (the dirty bitmap is on
   * the primary's host) and the protocol does not carry them yet: null.
   */
  pendingReplicationBytes: number | null;
  /** Changed (uncompressed) bytes per committed cycle in the window. */
  averageReplicationBytes: number;
  maxReplicationBytes: number;
  /** Bytes on the wire (compressed) per committed cycle in the window. */
  averageTransferredBytes: number;
  maxTransferredBytes: number;
  /** From a cycle's cut-off on the primary to its commit on the site. */
  averageReplicationLatencySeconds: number;
  maxReplicationLatencySeconds: number;
  replicationSuccessCount: number;
  replicationMissCount: number;
  replicationFailureCount: number;
  lastTestFailoverTime: string | null;
  frequencySeconds: number;
  rpoAlertSeconds: number;
  agentConnected: boolean;
}

export interface MeasureInput {
  vmId: string;
  state: ReplicationStateName;
  commits: readonly CycleRecord[];
  failures: readonly number[];
  newestCutoffAt: number | undefined;
  lastTestFailoverAt: number | undefined;
  agentConnected: boolean;
  health: HealthResult;
}

const iso = (ms: number | undefined) => (ms === undefined ? null : new Date(ms).toISOString());
const round3 = (n: number) => Math.round(n * 1000) / 1000;

export function measure(input: MeasureInput, t: HealthThresholds, now: number): Measurement {
  const from = now - t.windowSeconds * 1000;
  const inWindow = input.commits.filter((c) => c.committedAt >= from && c.committedAt <= now);
  const sizes = inWindow.map((c) => c.dataBytes);
  const wire = inWindow.map((c) => c.wireBytes);
  const latencies = inWindow.map((c) => Math.max(0, c.committedAt - c.cutoffAt) / 1000);
  const avg = (xs: number[]) => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);
  const max = (xs: number[]) => (xs.length === 0 ? 0 : Math.max(...xs));
  const counts = countCycles({ commits: input.commits, failures: input.failures, state: input.state }, t, now);
  const last = input.commits.at(-1);
  return {
    vmId: input.vmId,
    state: input.state,
    health: input.health.level,
    healthReasons: [...input.health.reasons],
    monitoringStartTime: new Date(from).toISOString(),
    monitoringEndTime: new Date(now).toISOString(),
    windowSeconds: t.windowSeconds,
    lastReplicationTime: iso(last?.committedAt),
    newestPointCutoffTime: iso(input.newestCutoffAt),
    newestPointAgeSeconds: input.newestCutoffAt === undefined ? null : round3(Math.max(0, now - input.newestCutoffAt) / 1000),
    pendingReplicationBytes: null,
    averageReplicationBytes: Math.round(avg(sizes)),
    maxReplicationBytes: max(sizes),
    averageTransferredBytes: Math.round(avg(wire)),
    maxTransferredBytes: max(wire),
    averageReplicationLatencySeconds: round3(avg(latencies)),
    maxReplicationLatencySeconds: round3(max(latencies)),
    replicationSuccessCount: counts.succeeded,
    replicationMissCount: counts.missed,
    replicationFailureCount: counts.failed,
    lastTestFailoverTime: iso(input.lastTestFailoverAt),
    frequencySeconds: t.frequencySeconds,
    rpoAlertSeconds: t.rpoAlertSeconds,
    agentConnected: input.agentConnected,
  };
}
