/**
 * The site's health monitor: evaluates every VM's health on read (status, measure) and every
 * `evaluateEverySeconds`, so that time alone (an agent gone silent, a point ageing) changes it;
 * records each change of level in the ledger (stream `health-<vmId>`, event HealthChanged with
 * the reasons) and keeps the Prometheus gauges current. Events are bounded: one per change of
 * level, never one per evaluation.
 */
import type { Logger } from "../../common/logger.js";
import type { EventStore } from "../../ledger/eventStore.js";
import type { VmStatus } from "../../ledger/projections/status.js";
import { REPLICATION_STATES } from "../../ledger/domain/states.js";
import { MonitoringHistory, MAX_WINDOW_SECONDS } from "./history.js";
import { measure, type Measurement } from "./measure.js";
import { defaultThresholds, evaluateHealth, type CertificateExpiry, type DrillFact, type HealthLevel, type HealthResult, type HealthThresholds } from "./rules.js";
import type { SiteMetrics } from "./siteMetrics.js";
import type { AgentActivity } from "./activity.js";

export const HEALTH_STREAM_PREFIX = "health-";
export const HEALTH_CHANGED = "HealthChanged";
export const healthStream = (vmId: string) => `${HEALTH_STREAM_PREFIX}${vmId}`;

/** Site config `health`: every key optional. */
export interface HealthSettings {
  /** How often the site evaluates every VM (default 15 s). */
  evaluateEverySeconds?: number;
  /** Frequency and RPO alert when the VM's policy gives none (else: inferred frequency, 4x it). */
  frequencySeconds?: number;
  rpoAlertSeconds?: number;
  silentAfterSeconds?: number;
  /** The monitoring window (default 1 h). */
  windowSeconds?: number;
}

/** What the VM's effective policy says; wiring policies in is setting `HealthMonitor.policyOf`. */
export type PolicyThresholds = (
  vmId: string,
) => { name?: string; frequencySeconds?: number; rpoAlertSeconds?: number; verification?: { windowSeconds: number; requiredSince: number } } | undefined;

export interface VmHealth {
  status: VmStatus;
  result: HealthResult;
  thresholds: HealthThresholds;
  policyName: string | undefined;
  connected: boolean;
}

export const DEFAULT_EVALUATE_EVERY_SECONDS = 15;

export class HealthMonitor {
  private readonly history: MonitoringHistory;
  private readonly recorded = new Map<string, HealthLevel>();
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  policyOf: PolicyThresholds = () => undefined;
  /** This site's own certificate (CERT_EXPIRING for every VM); replaced when a renewed one is served. */
  siteCertificate: CertificateExpiry | undefined;
  /** The certificate each VM's primary agent presented at its last accepted Hello. */
  private readonly agentCertificates = new Map<string, CertificateExpiry>();

  constructor(
    private readonly store: EventStore,
    private readonly activity: AgentActivity,
    private readonly isConnected: (vmId: string) => boolean,
    private readonly settings: HealthSettings,
    private readonly logger: Logger,
    private readonly metrics: SiteMetrics | undefined,
    private readonly clock: () => number = Date.now,
  ) {
    this.history = new MonitoringHistory({ commit: (vm, c) => metrics?.onCommit(vm, c), failure: (vm) => metrics?.onFailure(vm) });
  }

  /** Reads the last recorded level of every VM, evaluates once, then every `evaluateEverySeconds`. */
  async start(): Promise<void> {
    let from = 0n;
    for (;;) {
      const page = await this.store.readAll({ fromPosition: from, maxCount: 1000, streamPrefix: HEALTH_STREAM_PREFIX });
      for (const e of page) if (e.type === HEALTH_CHANGED) this.recorded.set(String(e.data.vmId), e.data.to as HealthLevel);
      if (page.length < 1000) break;
      from = page.at(-1)!.globalPosition;
    }
    await this.tick();
    const every = (this.settings.evaluateEverySeconds ?? DEFAULT_EVALUATE_EVERY_SECONDS) * 1000;
    this.timer = setInterval(() => void this.tick(), every);
    this.timer.unref();
  }

  /** At an accepted Hello: the agent's certificate as it presented it, until its next Hello. */
  noteAgentCertificate(vmId: string, cert: { commonName: string; notAfter: Date }): void {
    this.agentCertificates.set(vmId, { which: "agent", commonName: cert.commonName, notAfter: cert.notAfter.getTime() });
  }

  private certificatesOf(vmId: string): CertificateExpiry[] {
    const agent = this.agentCertificates.get(vmId);
    return [...(this.siteCertificate ? [this.siteCertificate] : []), ...(agent ? [agent] : [])];
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.ticking;
  }

  /** Every VM now, after folding what the ledger holds (one evaluation at a time). */
  tick(): Promise<void> {
    this.ticking ??= this.evaluateAll().finally(() => (this.ticking = undefined));
    return this.ticking;
  }

  private async evaluateAll(): Promise<void> {
    try {
      await this.history.catchUp(this.store);
      const now = this.clock();
      for (const status of this.history.statuses(new Date(now))) {
        const h = this.evaluateFolded(status, now);
        this.metrics?.setVm(status.vmId, {
          result: h.result,
          state: status.state,
          allStates: REPLICATION_STATES,
          ageSeconds: status.lagSeconds,
          frequencySeconds: h.thresholds.frequencySeconds,
          rpoAlertSeconds: h.thresholds.rpoAlertSeconds,
          connected: h.connected,
          points: status.recoveryPoints,
          drills: {
            lastVerifiedAt: status.lastVerified ? Date.parse(status.lastVerified.finishedAt) : undefined,
            timeToVerifiedMs: status.lastVerified?.timeToVerifiedMs,
            lastFailed: status.lastDrill ? status.lastDrill.result === "failed" : undefined,
          },
        });
        await this.recordChange(status.vmId, h.result, now);
      }
      this.metrics?.evaluated(now);
    } catch (err) {
      this.logger.error({ err }, "health evaluation failed; retried at the next interval");
    }
  }

  private async recordChange(vmId: string, result: HealthResult, now: number): Promise<void> {
    const previous = this.recorded.get(vmId);
    if (previous === result.level) return;
    const data = {
      vmId,
      from: previous ?? null,
      to: result.level,
      reasons: result.reasons.map((r) => ({ code: r.code, level: r.level, message: r.message })),
      at: new Date(now).toISOString(),
    };
    await this.store.append(healthStream(vmId), [{ type: HEALTH_CHANGED, data }], "any");
    this.recorded.set(vmId, result.level);
    const log = result.level === "normal" ? this.logger.info.bind(this.logger) : this.logger.warn.bind(this.logger);
    log({ vm: vmId, from: previous, to: result.level, reasons: result.reasons.map((r) => r.code) }, `health ${previous ?? "(none)"} -> ${result.level}`);
  }

  /** One VM's health as of now, from the ledger as it is now (status, measure). */
  async evaluate(vmId: string): Promise<VmHealth | undefined> {
    await this.history.catchUp(this.store);
    const now = this.clock();
    const status = this.history.statusOf(vmId, new Date(now));
    return status && this.evaluateFolded(status, now);
  }

  async evaluateAllNow(): Promise<VmHealth[]> {
    await this.history.catchUp(this.store);
    const now = this.clock();
    return this.history.statuses(new Date(now)).map((s) => this.evaluateFolded(s, now));
  }

  async measure(vmId: string, windowSeconds: number | undefined): Promise<Measurement | undefined> {
    const h = await this.evaluate(vmId);
    if (!h) return undefined;
    const now = this.clock();
    const hist = this.history.historyOf(vmId);
    const window = Math.min(windowSeconds && windowSeconds > 0 ? windowSeconds : h.thresholds.windowSeconds, MAX_WINDOW_SECONDS);
    return measure(
      {
        vmId,
        state: h.status.state,
        commits: hist.commits,
        failures: hist.failures,
        newestCutoffAt: h.status.lastCutoffAt ? Date.parse(h.status.lastCutoffAt) : undefined,
        lastTestFailoverAt: hist.lastTestFailoverAt,
        agentConnected: h.connected,
        health: h.result,
      },
      { ...h.thresholds, windowSeconds: window },
      now,
    );
  }

  private evaluateFolded(status: VmStatus, now: number): VmHealth {
    const hist = this.history.historyOf(status.vmId);
    const policy = this.policyOf(status.vmId);
    const thresholds = defaultThresholds({
      frequencySeconds: policy?.frequencySeconds ?? this.settings.frequencySeconds ?? inferFrequencySeconds(hist.commits),
      rpoAlertSeconds: policy?.rpoAlertSeconds ?? this.settings.rpoAlertSeconds,
      silentAfterSeconds: this.settings.silentAfterSeconds,
      windowSeconds: this.settings.windowSeconds,
    });
    const connected = this.isConnected(status.vmId);
    const result = evaluateHealth(
      {
        state: status.state,
        consecutiveFailures: status.consecutiveFailures,
        lastErrorMessage: status.lastError?.message,
        resyncReason: status.resyncReason,
        resyncApprovedBy: status.resyncApprovedBy,
        pauseReason: status.pauseReason,
        cycleSkipped: status.cycleSkipped,
        quiesceFailure: status.quiesceFailure,
        suspectPoints: status.suspectPoints,
        lastCleanPointId: status.lastCleanPointId,
        commits: hist.commits,
        failures: hist.failures,
        newestCutoffAt: status.lastCutoffAt ? Date.parse(status.lastCutoffAt) : undefined,
        agentConnected: connected,
        lastActivityAt: this.activity.lastActivityAt(status.vmId),
        watchingSince: this.activity.since,
        certificates: this.certificatesOf(status.vmId),
        verification: policy?.verification && {
          ...policy.verification,
          lastVerified: drillFact(status.lastVerified),
          lastDrill: drillFact(status.lastDrill),
        },
      },
      thresholds,
      now,
    );
    return { status, result, thresholds, policyName: policy?.name, connected };
  }
}

function drillFact(d: VmStatus["lastDrill"]): DrillFact | undefined {
  return d && { pointId: d.pointId, result: d.result, failedCheck: d.failedCheck, message: d.message, finishedAt: Date.parse(d.finishedAt) };
}

/**
 * Without a policy the site does not know the agent's interval (Hello does not carry it): the
 * median gap between the last incremental cut-offs stands in for it (the agent's interval plus
 * its cycles' duration), at least INFERRED_FREQUENCY_FLOOR_SECONDS: a guessed frequency of a few
 * seconds would read the jitter of cycle times as misses and late points. Undefined with fewer
 * than three such gaps, and then Hyper-V's default of 5 min applies.
 */
export const INFERRED_FREQUENCY_FLOOR_SECONDS = 10;

export function inferFrequencySeconds(commits: readonly { kind: string; cutoffAt: number }[]): number | undefined {
  const gaps: number[] = [];
  for (let i = commits.length - 1; i >= 1 && gaps.length < 11; i--) {
    if (commits[i]!.kind !== "incremental") continue;
    gaps.push(commits[i]!.cutoffAt - commits[i - 1]!.cutoffAt);
  }
  if (gaps.length < 3) return undefined;
  gaps.sort((a, b) => a - b);
  return Math.max(INFERRED_FREQUENCY_FLOOR_SECONDS, Math.round(gaps[Math.floor(gaps.length / 2)]! / 100) / 10);
}
