/**
 * The site's Prometheus metrics. Names follow Prometheus conventions: `qreplica_` prefix, ages in
 * seconds, sizes in bytes, counters ending in `_total`, cycle durations as histograms. The only
 * unbounded label is `vm` (one series set per replicated VM); `state`, `level` and `outcome` take
 * a fixed set of values.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { ReplicationStateName } from "../../ledger/domain/states.js";
import type { CycleRecord, HealthLevel, HealthResult } from "./rules.js";

export const HEALTH_LEVELS: readonly HealthLevel[] = ["normal", "warning", "critical"];
const LEVEL_VALUE: Record<HealthLevel, number> = { normal: 0, warning: 1, critical: 2 };

/** Seconds: from sub-second cycles of an idle VM to the hour of a large initial replication. */
export const CYCLE_DURATION_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600];

export class SiteMetrics {
  readonly registry = new Registry();
  private readonly health = new Gauge({
    name: "qreplica_vm_health",
    help: "Replication health per VM: 1 for the current level (label state: normal, warning, critical), 0 for the others",
    labelNames: ["vm", "state"],
    registers: [this.registry],
  });
  private readonly healthLevel = new Gauge({
    name: "qreplica_vm_health_level",
    help: "Replication health per VM as a number: 0 normal, 1 warning, 2 critical",
    labelNames: ["vm"],
    registers: [this.registry],
  });
  private readonly reasons = new Gauge({
    name: "qreplica_vm_health_reasons",
    help: "Number of reasons health is not normal, per VM and level",
    labelNames: ["vm", "level"],
    registers: [this.registry],
  });
  private readonly relState = new Gauge({
    name: "qreplica_vm_replication_state",
    help: "Relationship state per VM: 1 for the current state",
    labelNames: ["vm", "state"],
    registers: [this.registry],
  });
  private readonly age = new Gauge({
    name: "qreplica_vm_newest_point_age_seconds",
    help: "Seconds since the cut-off of the VM's newest recovery point (the data a failover now would lose)",
    labelNames: ["vm"],
    registers: [this.registry],
  });
  private readonly rpo = new Gauge({
    name: "qreplica_vm_rpo_alert_seconds",
    help: "The RPO alert threshold health uses for the VM",
    labelNames: ["vm"],
    registers: [this.registry],
  });
  private readonly frequency = new Gauge({
    name: "qreplica_vm_frequency_seconds",
    help: "The cycle frequency health uses for the VM",
    labelNames: ["vm"],
    registers: [this.registry],
  });
  private readonly missed = new Gauge({
    name: "qreplica_vm_cycles_missed_in_window",
    help: "Cycles missed in the monitoring window",
    labelNames: ["vm"],
    registers: [this.registry],
  });
  private readonly connected = new Gauge({
    name: "qreplica_vm_agent_connected",
    help: "1 while the VM's primary agent has its Replicate stream open",
    labelNames: ["vm"],
    registers: [this.registry],
  });
  private readonly points = new Gauge({ name: "qreplica_vm_recovery_points", help: "Recovery points held for the VM", labelNames: ["vm"], registers: [this.registry] });
  private readonly cycles = new Counter({
    name: "qreplica_site_cycles_total",
    help: "Cycles received, by outcome (committed, failed), since the ledger began",
    labelNames: ["vm", "outcome"],
    registers: [this.registry],
  });
  private readonly dataBytes = new Counter({
    name: "qreplica_site_changed_bytes_total",
    help: "Changed bytes committed (uncompressed)",
    labelNames: ["vm"],
    registers: [this.registry],
  });
  private readonly wireBytes = new Counter({
    name: "qreplica_site_received_bytes_total",
    help: "Bytes received on the wire for committed cycles (compressed)",
    labelNames: ["vm"],
    registers: [this.registry],
  });
  private readonly duration = new Histogram({
    name: "qreplica_site_cycle_duration_seconds",
    help: "Time from a cycle's begin to its commit on the site",
    labelNames: ["vm"],
    buckets: CYCLE_DURATION_BUCKETS,
    registers: [this.registry],
  });
  private readonly latency = new Histogram({
    name: "qreplica_site_replication_latency_seconds",
    help: "Time from a cycle's cut-off on the primary to its commit on the site",
    labelNames: ["vm"],
    buckets: CYCLE_DURATION_BUCKETS,
    registers: [this.registry],
  });
  private readonly lastVerified = new Gauge({
    name: "qreplica_vm_last_verified_timestamp_seconds",
    help: "When a verification drill last verified one of the VM's points (Unix time); absent before the first",
    labelNames: ["vm"],
    registers: [this.registry],
  });
  private readonly timeToVerified = new Gauge({
    name: "qreplica_vm_time_to_verified_seconds",
    help: "The last verified drill's time from its start to its last check passing (boot included)",
    labelNames: ["vm"],
    registers: [this.registry],
  });
  private readonly lastDrillFailed = new Gauge({
    name: "qreplica_vm_last_drill_failed",
    help: "1 when the VM's last verification drill failed, 0 when it verified its point; absent before the first",
    labelNames: ["vm"],
    registers: [this.registry],
  });
  private readonly lastEvaluation = new Gauge({
    name: "qreplica_site_health_evaluation_timestamp_seconds",
    help: "When the site last evaluated every VM's health (Unix time)",
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "qreplica_site_" });
  }

  onCommit(vm: string, c: CycleRecord): void {
    this.cycles.inc({ vm, outcome: "committed" });
    this.dataBytes.inc({ vm }, c.dataBytes);
    this.wireBytes.inc({ vm }, c.wireBytes);
    this.duration.observe({ vm }, c.durationMs / 1000);
    this.latency.observe({ vm }, Math.max(0, c.committedAt - c.cutoffAt) / 1000);
  }

  onFailure(vm: string): void {
    this.cycles.inc({ vm, outcome: "failed" });
  }

  setVm(
    vm: string,
    v: {
      result: HealthResult;
      state: ReplicationStateName;
      allStates: readonly string[];
      ageSeconds: number | undefined;
      frequencySeconds: number;
      rpoAlertSeconds: number;
      connected: boolean;
      points: number;
      /** The last drill and the last verified one (times in ms). */
      drills?: { lastVerifiedAt?: number | undefined; timeToVerifiedMs?: number | undefined; lastFailed?: boolean | undefined };
    },
  ): void {
    for (const l of HEALTH_LEVELS) this.health.set({ vm, state: l }, v.result.level === l ? 1 : 0);
    this.healthLevel.set({ vm }, LEVEL_VALUE[v.result.level]);
    this.reasons.set({ vm, level: "warning" }, v.result.reasons.filter((r) => r.level === "warning").length);
    this.reasons.set({ vm, level: "critical" }, v.result.reasons.filter((r) => r.level === "critical").length);
    for (const s of v.allStates) this.relState.set({ vm, state: s }, v.state === s ? 1 : 0);
    if (v.ageSeconds === undefined) this.age.remove({ vm });
    else this.age.set({ vm }, v.ageSeconds);
    this.rpo.set({ vm }, v.rpoAlertSeconds);
    this.frequency.set({ vm }, v.frequencySeconds);
    this.missed.set({ vm }, v.result.counts.missed);
    this.connected.set({ vm }, v.connected ? 1 : 0);
    this.points.set({ vm }, v.points);
    const d = v.drills;
    if (d?.lastVerifiedAt === undefined) this.lastVerified.remove({ vm });
    else this.lastVerified.set({ vm }, d.lastVerifiedAt / 1000);
    if (d?.timeToVerifiedMs === undefined) this.timeToVerified.remove({ vm });
    else this.timeToVerified.set({ vm }, d.timeToVerifiedMs / 1000);
    if (d?.lastFailed === undefined) this.lastDrillFailed.remove({ vm });
    else this.lastDrillFailed.set({ vm }, d.lastFailed ? 1 : 0);
  }

  evaluated(now: number): void {
    this.lastEvaluation.set(now / 1000);
  }
}
