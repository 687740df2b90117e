/**
 * The agent's Prometheus metrics (served at `metricsListen`, see agentConfig): cycles by outcome,
 * bytes read from the disks and sent, cycle durations, and the process's own CPU and memory
 * (prom-client's default metrics). One registry per process; `vm` is the only unbounded label.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

/** Seconds, as the site's histogram (site/health/siteMetrics.ts). */
const BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600];

export type CycleOutcome = "committed" | "failed" | "refused" | "skipped";

class AgentMetrics {
  readonly registry = new Registry();
  private readonly cycles = new Counter({ name: "qreplica_agent_cycles_total", help: "Cycles by outcome: committed (acknowledged by the site), failed (on this host), refused (by the site), skipped (not started, e.g. scratch space low)", labelNames: ["vm", "outcome"], registers: [this.registry] });
  private readonly read = new Counter({ name: "qreplica_agent_read_bytes_total", help: "Changed bytes read from the VM's disks for committed cycles", labelNames: ["vm"], registers: [this.registry] });
  private readonly sent = new Counter({ name: "qreplica_agent_sent_bytes_total", help: "Bytes sent on the wire (compressed) for committed cycles", labelNames: ["vm"], registers: [this.registry] });
  private readonly duration = new Histogram({ name: "qreplica_agent_cycle_duration_seconds", help: "Time to read, send and have a cycle acknowledged by the site (after its cut-off)", labelNames: ["vm"], buckets: BUCKETS, registers: [this.registry] });
  private readonly missedSlots = new Counter({ name: "qreplica_agent_cycle_slots_missed_total", help: "Scheduled cycle slots that passed without a start (the VM's last cycle overran them, or maxCyclesInFlight was reached)", labelNames: ["vm"], registers: [this.registry] });
  private readonly inFlight = new Gauge({ name: "qreplica_agent_cycles_in_flight", help: "Cycles running now over all of the agent's VMs (bounded by maxCyclesInFlight)", registers: [this.registry] });
  private readonly lastCommit = new Gauge({ name: "qreplica_agent_last_committed_cycle_timestamp_seconds", help: "When the site last acknowledged a cycle of the VM (Unix time)", labelNames: ["vm"], registers: [this.registry] });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "qreplica_agent_" });
  }

  committed(vm: string, v: { readBytes: number; sentBytes: number; seconds: number }): void {
    this.cycles.inc({ vm, outcome: "committed" });
    this.read.inc({ vm }, v.readBytes);
    this.sent.inc({ vm }, v.sentBytes);
    this.duration.observe({ vm }, v.seconds);
    this.lastCommit.set({ vm }, Date.now() / 1000);
  }

  outcome(vm: string, outcome: Exclude<CycleOutcome, "committed">): void {
    this.cycles.inc({ vm, outcome });
  }

  slotsMissed(vm: string, count: number): void {
    this.missedSlots.inc({ vm }, count);
  }

  cyclesInFlight(count: number): void {
    this.inFlight.set(count);
  }

  /** Every VM shows a zero for each outcome from the start, so rates work before the first failure. */
  declare(vm: string): void {
    for (const outcome of ["committed", "failed", "refused", "skipped"] as const) this.cycles.inc({ vm, outcome }, 0);
    this.read.inc({ vm }, 0);
    this.sent.inc({ vm }, 0);
    this.missedSlots.inc({ vm }, 0);
  }
}

export const agentMetrics = new AgentMetrics();
