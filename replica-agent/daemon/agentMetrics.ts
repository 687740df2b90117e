/**
 * The agent's Prometheus metrics (served at `metricsListen`, see agentConfig): cycles by outcome,
 * bytes read from the disks and sent, cycle durations, and the process's own CPU and memory
 * (prom-client's default metrics). One registry per process; `vm` is the only unbounded label.
 *
 * prom-client is loaded only when metrics are enabled: without `metricsListen` the agent does not
 * carry it (its peak RSS is a budget) and every recording below is a no-op.
 */
import type { Registry } from "prom-client";

type PromClient = typeof import("prom-client");

/** Seconds, as the site's histogram (site/health/siteMetrics.ts). */
const BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600];
/** Seconds a guest is paused for a cut-off: milliseconds matter (the group-cutoff goal is 50 ms). */
const PAUSE_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];

export type CycleOutcome = "committed" | "failed" | "refused" | "skipped";

class AgentMetrics {
  readonly registry: Registry;
  private readonly cycles: InstanceType<PromClient["Counter"]>;
  private readonly read: InstanceType<PromClient["Counter"]>;
  private readonly sent: InstanceType<PromClient["Counter"]>;
  private readonly duration: InstanceType<PromClient["Histogram"]>;
  private readonly missedSlots: InstanceType<PromClient["Counter"]>;
  private readonly inFlight: InstanceType<PromClient["Gauge"]>;
  private readonly lastCommit: InstanceType<PromClient["Gauge"]>;
  private readonly pause: InstanceType<PromClient["Histogram"]>;
  private readonly groupCutoffs: InstanceType<PromClient["Counter"]>;
  private readonly groupPause: InstanceType<PromClient["Histogram"]>;

  constructor(prom: PromClient) {
    this.registry = new prom.Registry();
    this.cycles = new prom.Counter({
      name: "qreplica_agent_cycles_total",
      help: "Cycles by outcome: committed (acknowledged by the site), failed (on this host), refused (by the site), skipped (not started, e.g. scratch space low)",
      labelNames: ["vm", "outcome"],
      registers: [this.registry],
    });
    this.read = new prom.Counter({
      name: "qreplica_agent_read_bytes_total",
      help: "Changed bytes read from the VM's disks for committed cycles",
      labelNames: ["vm"],
      registers: [this.registry],
    });
    this.sent = new prom.Counter({
      name: "qreplica_agent_sent_bytes_total",
      help: "Bytes sent on the wire (compressed) for committed cycles",
      labelNames: ["vm"],
      registers: [this.registry],
    });
    this.duration = new prom.Histogram({
      name: "qreplica_agent_cycle_duration_seconds",
      help: "Time to read, send and have a cycle acknowledged by the site (after its cut-off)",
      labelNames: ["vm"],
      buckets: BUCKETS,
      registers: [this.registry],
    });
    this.missedSlots = new prom.Counter({
      name: "qreplica_agent_cycle_slots_missed_total",
      help: "Scheduled cycle slots that passed without a start (the VM's last cycle overran them, or maxCyclesInFlight was reached)",
      labelNames: ["vm"],
      registers: [this.registry],
    });
    this.inFlight = new prom.Gauge({
      name: "qreplica_agent_cycles_in_flight",
      help: "Cycles running now over all of the agent's VMs (bounded by maxCyclesInFlight)",
      registers: [this.registry],
    });
    this.lastCommit = new prom.Gauge({
      name: "qreplica_agent_last_committed_cycle_timestamp_seconds",
      help: "When the site last acknowledged a cycle of the VM (Unix time)",
      labelNames: ["vm"],
      registers: [this.registry],
    });
    this.pause = new prom.Histogram({
      name: "qreplica_agent_cutoff_pause_seconds",
      help: "How long the VM's vCPUs were stopped for a committed cycle's cut-off (stop to cont)",
      labelNames: ["vm"],
      buckets: PAUSE_BUCKETS,
      registers: [this.registry],
    });
    this.groupCutoffs = new prom.Counter({
      name: "qreplica_agent_group_cutoffs_total",
      help: "Consistency group cut-offs whose members' cycles were committed: complete (every member joined) or partial (some did not arrive in time: no group point)",
      labelNames: ["group", "outcome"],
      registers: [this.registry],
    });
    this.groupPause = new prom.Histogram({
      name: "qreplica_agent_group_cutoff_pause_seconds",
      help: "How long a consistency group's guests were paused for one cut-off (first stop sent to last cont answered)",
      labelNames: ["group"],
      buckets: PAUSE_BUCKETS,
      registers: [this.registry],
    });
    prom.collectDefaultMetrics({ register: this.registry, prefix: "qreplica_agent_" });
  }

  committed(vm: string, v: { readBytes: number; sentBytes: number; seconds: number }): void {
    this.cycles.inc({ vm, outcome: "committed" });
    this.read.inc({ vm }, v.readBytes);
    this.sent.inc({ vm }, v.sentBytes);
    this.duration.observe({ vm }, v.seconds);
    this.lastCommit.set({ vm }, Date.now() / 1000);
  }

  /** A committed cycle's cut-off: the VM's own pause, and (once per group cut, by its first member) the group's. */
  cutoff(
    vm: string,
    c: { vcpuPauseMs?: number | undefined; group?: { groupId: string; members: string[]; joined: string[]; groupPauseMs: number | undefined } | undefined },
  ): void {
    if (c.vcpuPauseMs !== undefined) this.pause.observe({ vm }, c.vcpuPauseMs / 1000);
    const g = c.group;
    if (!g || g.joined[0] !== vm) return;
    this.groupCutoffs.inc({ group: g.groupId, outcome: g.members.every((m) => g.joined.includes(m)) ? "complete" : "partial" });
    if (g.groupPauseMs !== undefined) this.groupPause.observe({ group: g.groupId }, g.groupPauseMs / 1000);
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

let enabled: AgentMetrics | undefined;

/** Starts recording (loads prom-client); the registry is what the metrics endpoint serves. */
export async function enableAgentMetrics(): Promise<Registry> {
  enabled ??= new AgentMetrics(await import("prom-client"));
  return enabled.registry;
}

/** Where the agent records; nothing happens until enableAgentMetrics(). */
export const agentMetrics: Omit<AgentMetrics, "registry"> = {
  committed: (vm, v) => enabled?.committed(vm, v),
  outcome: (vm, o) => enabled?.outcome(vm, o),
  cutoff: (vm, c) => enabled?.cutoff(vm, c),
  slotsMissed: (vm, n) => enabled?.slotsMissed(vm, n),
  cyclesInFlight: (n) => enabled?.cyclesInFlight(n),
  declare: (vm) => enabled?.declare(vm),
};
