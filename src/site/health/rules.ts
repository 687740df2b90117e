/**
 * Replication health of one VM: Normal / Warning / Critical with every reason. Pure: a function
 * of the relationship's recent history, the thresholds and `now`, so each rule is tested with an
 * injected clock and the site evaluates it both on read (status, measure) and periodically (so
 * that time alone, e.g. a silent agent, changes it).
 *
 * Rules (Hyper-V's are the floor; README "Health" lists them for operators):
 * - Critical: resync required (RESYNC_REQUIRED); `failuresForCritical` cycles failed in a row
 *   (REPLICATION_FAILED); newest point older than the RPO alert threshold (RPO_EXCEEDED); the
 *   primary's agent silent, i.e. not connected and no Hello, cycle or stream message for longer
 *   than `silentAfterSeconds` (AGENT_SILENT).
 * - Warning: the last cycle failed (CYCLE_FAILED); more than 20% of the cycles due in the
 *   monitoring window missed (CYCLES_MISSED); no point for over an hour (NO_POINT_FOR_AN_HOUR);
 *   newest point older than twice the frequency (POINT_LATE); the primary reports it skips its
 *   cycles (CYCLES_SKIPPED); recent changes arrive faster than the link delivers them
 *   (RPO_AT_RISK); paused, resynchronising, or initial replication not done (STATE_*); this site's
 *   or the primary agent's certificate expires within 30 days (CERT_EXPIRING); the policy schedules
 *   verification drills and none verified a point within its window (POINT_NOT_VERIFIED).
 */
import type { ReplicationStateName } from "../../ledger/domain/states.js";

export type HealthLevel = "normal" | "warning" | "critical";

export type HealthReasonCode =
  | "RESYNC_REQUIRED"
  | "REPLICATION_FAILED"
  | "RPO_EXCEEDED"
  | "AGENT_SILENT"
  | "CYCLE_FAILED"
  | "CYCLES_MISSED"
  | "NO_POINT_FOR_AN_HOUR"
  | "POINT_LATE"
  | "CYCLES_SKIPPED"
  | "APP_CONSISTENT_FAILED"
  | "POINT_SUSPECT"
  | "RPO_AT_RISK"
  | "STATE_PAUSED"
  | "STATE_RESYNCHRONISING"
  | "STATE_INITIAL_REPLICATION"
  | "CERT_EXPIRING"
  | "POINT_NOT_VERIFIED";

/** A certificate the relationship depends on: this site's own, or the primary agent's (as presented at its last Hello). */
export interface CertificateExpiry {
  readonly which: "site" | "agent";
  readonly commonName: string;
  /** ms since the epoch. */
  readonly notAfter: number;
  /** Where it is on this host (the site's certFile); undefined for a peer's certificate. */
  readonly file?: string | undefined;
}

/** Certificates that expire within this long turn health to Warning: renewal needs an operator (and a CA host). */
export const CERT_EXPIRY_WARNING_MS = 30 * 24 * 3600 * 1000;

export interface HealthReason {
  readonly code: HealthReasonCode;
  readonly level: Exclude<HealthLevel, "normal">;
  readonly message: string;
}

export interface HealthThresholds {
  /** The policy's cycle frequency: slots are due this far apart. */
  readonly frequencySeconds: number;
  /** Newest point older than this: Critical (the policy's rpoAlertSeconds). */
  readonly rpoAlertSeconds: number;
  /** The agent is silent past this with no connection and no message. */
  readonly silentAfterSeconds: number;
  /** Hyper-V's monitoring window: missed-cycle ratio and statistics are over the last this many seconds. */
  readonly windowSeconds: number;
  /** Hyper-V: Warning when more than this fraction of the window's cycles were missed. */
  readonly missedWarnRatio: number;
  /** Hyper-V: Warning when no point was made for longer than this. */
  readonly noPointWarnSeconds: number;
  /** Consecutive failures that make a failing replication Critical (one is a Warning: the agent retries). */
  readonly failuresForCritical: number;
  /** RPO at risk when the link was busy more than this fraction of the time between recent cut-offs. */
  readonly rpoAtRiskUtilisation: number;
}

/** A commit as health and statistics need it; times in ms since the epoch. */
export interface CycleRecord {
  readonly seq: number;
  readonly kind: "full" | "incremental" | "resync";
  readonly cutoffAt: number;
  readonly committedAt: number;
  readonly dataBytes: number;
  readonly wireBytes: number;
  readonly durationMs: number;
}

export interface HealthInput {
  readonly state: ReplicationStateName;
  readonly consecutiveFailures: number;
  readonly lastErrorMessage: string | undefined;
  readonly resyncReason: string | undefined;
  /** Who approved the pending resync, until it runs. */
  readonly resyncApprovedBy?: string | undefined;
  readonly pauseReason: string | undefined;
  readonly cycleSkipped: { readonly code: string; readonly message: string; readonly since: string } | undefined;
  /** An application-consistent point was due and taken crash-consistent; cleared by the next application-consistent one. */
  readonly quiesceFailure?: { readonly cycleSeq: number; readonly at: string; readonly reason: string } | undefined;
  /** Suspect points not cleared (encryption signal), oldest first, and the newest point before the first one. */
  readonly suspectPoints?: readonly { readonly pointId: string; readonly disks: readonly { readonly diskId: string; readonly share: number; readonly baselineShare: number }[] }[];
  readonly lastCleanPointId?: string | undefined;
  /** Committed cycles, oldest first (at least those in the window and the one before it). */
  readonly commits: readonly CycleRecord[];
  /** Times of failed cycles (ms), oldest first. */
  readonly failures: readonly number[];
  /** The newest recovery point's cut-off (ms); undefined before the first. */
  readonly newestCutoffAt: number | undefined;
  /** The primary's agent has a Replicate stream open now. */
  readonly agentConnected: boolean;
  /** Its last Hello, message or stream end seen (ms); undefined when none since the site started. */
  readonly lastActivityAt: number | undefined;
  /** When the site started watching (ms): a silent agent is measured from here if nothing was seen. */
  readonly watchingSince: number;
  /** The certificates this relationship depends on (CERT_EXPIRING); absent: none known. */
  readonly certificates?: readonly CertificateExpiry[] | undefined;
  /** The policy's verification drills (POINT_NOT_VERIFIED); absent: the policy schedules none. */
  readonly verification?: VerificationHealth | undefined;
}

/** A drill as health reads it (times in ms since the epoch). */
export interface DrillFact {
  readonly pointId: string;
  readonly result: "verified" | "failed";
  readonly failedCheck?: string | undefined;
  readonly message?: string | undefined;
  readonly finishedAt: number;
}

export interface VerificationHealth {
  readonly windowSeconds: number;
  /** Since when the policy asks for drills: the window of a VM never verified is measured from here. */
  readonly requiredSince: number;
  readonly lastVerified?: DrillFact | undefined;
  readonly lastDrill?: DrillFact | undefined;
}

export interface CycleCounts {
  readonly succeeded: number;
  readonly failed: number;
  readonly missed: number;
}

export interface HealthResult {
  readonly level: HealthLevel;
  /** Critical reasons first; within a level, causes (skipped, failed, silent) before symptoms (late). */
  readonly reasons: readonly HealthReason[];
  readonly counts: CycleCounts;
}

export const DEFAULT_FREQUENCY_SECONDS = 300;

/**
 * Thresholds when the VM's policy does not give them: the frequency as seen (or Hyper-V's 5 min),
 * an RPO alert of 4x the frequency (at least a minute), and the agent called silent when it has
 * been away that long too. Wiring the policy in is passing its frequency and rpoAlertSeconds.
 */
export function defaultThresholds(given: { frequencySeconds?: number; rpoAlertSeconds?: number; silentAfterSeconds?: number; windowSeconds?: number } = {}): HealthThresholds {
  const frequencySeconds = given.frequencySeconds && given.frequencySeconds > 0 ? given.frequencySeconds : DEFAULT_FREQUENCY_SECONDS;
  const rpoAlertSeconds = given.rpoAlertSeconds && given.rpoAlertSeconds > 0 ? given.rpoAlertSeconds : Math.max(4 * frequencySeconds, 60);
  return {
    frequencySeconds,
    rpoAlertSeconds,
    silentAfterSeconds: given.silentAfterSeconds && given.silentAfterSeconds > 0 ? given.silentAfterSeconds : rpoAlertSeconds,
    windowSeconds: given.windowSeconds && given.windowSeconds > 0 ? given.windowSeconds : 3600,
    missedWarnRatio: 0.2,
    noPointWarnSeconds: 3600,
    failuresForCritical: 3,
    rpoAtRiskUtilisation: 0.8,
  };
}

/** States in which the primary is expected to cut points and keep its stream open. */
const REPLICATING_STATES: ReadonlySet<ReplicationStateName> = new Set([
  "ready-for-initial-replication",
  "initial-replication-in-progress",
  "replicating",
  "resync-required",
  "resynchronising",
]);

const secs = (ms: number) => `${Math.round(ms / 100) / 10} s`;

export function evaluateHealth(input: HealthInput, t: HealthThresholds, now: number): HealthResult {
  const reasons: HealthReason[] = [];
  const crit = (code: HealthReasonCode, message: string) => reasons.push({ code, level: "critical", message });
  const warn = (code: HealthReasonCode, message: string) => reasons.push({ code, level: "warning", message });
  const counts = countCycles(input, t, now);
  const s = input.state;

  if (s === "resync-required") {
    const approved = input.resyncApprovedBy ? ` (approved by ${input.resyncApprovedBy}; waiting for the primary's agent)` : "";
    crit("RESYNC_REQUIRED", `resync required${input.resyncReason ? `: ${input.resyncReason}` : ""}${approved}`);
  }
  if (s === "paused") warn("STATE_PAUSED", `replication is paused${input.pauseReason ? `: ${input.pauseReason}` : ""}`);
  if (s === "resynchronising") warn("STATE_RESYNCHRONISING", `resynchronising${input.resyncReason ? ` after: ${input.resyncReason}` : ""}`);
  if (s === "ready-for-initial-replication" || s === "initial-replication-in-progress") warn("STATE_INITIAL_REPLICATION", "initial replication is not complete");
  // Whatever cycle is due (initial, resync or incremental): why the primary cuts nothing.
  if (input.quiesceFailure) {
    const q = input.quiesceFailure;
    warn(
      "APP_CONSISTENT_FAILED",
      `the application-consistent point due at ${q.at} (cycle ${q.cycleSeq}) is crash-consistent: the guest could not be frozen (${q.reason}); check qemu-guest-agent in the guest`,
    );
  }
  const firstSuspect = input.suspectPoints?.[0];
  if (firstSuspect) {
    const pct = (x: number) => `${Math.round(x * 100)}%`;
    const disks = firstSuspect.disks.map((d) => `${d.diskId} ${pct(d.share)} (baseline ${pct(d.baselineShare)})`).join(", ");
    const more = input.suspectPoints!.length > 1 ? ` and ${input.suspectPoints!.length - 1} later point(s)` : "";
    warn(
      "POINT_SUSPECT",
      `recovery point ${firstSuspect.pointId}${more} may hold encrypted data: the changed bytes stopped compressing on ${disks}; ` +
        `the last clean point is ${input.lastCleanPointId ?? "none retained"} ('failover --point last-clean'); if this is expected, 'qreplica points clear-suspect'`,
    );
  }
  if (input.cycleSkipped && s !== "paused")
    warn("CYCLES_SKIPPED", `${input.cycleSkipped.code}: the primary skips its cycles since ${input.cycleSkipped.since}: ${input.cycleSkipped.message}`);

  if (REPLICATING_STATES.has(s) || s === "paused") {
    const f = input.consecutiveFailures;
    if (f >= t.failuresForCritical) crit("REPLICATION_FAILED", `${f} cycles failed in a row: ${input.lastErrorMessage ?? ""}`);
    else if (f > 0) warn("CYCLE_FAILED", `the last cycle failed: ${input.lastErrorMessage ?? ""}`);
  }

  if (REPLICATING_STATES.has(s)) {
    lagRules(input, t, now, crit, warn);
    const due = counts.succeeded + counts.failed + counts.missed;
    if (due > 0 && counts.missed / due > t.missedWarnRatio) {
      warn("CYCLES_MISSED", `${counts.missed} of ${due} cycles due in the last ${t.windowSeconds} s were missed (more than ${Math.round(t.missedWarnRatio * 100)}%)`);
    }
    const risk = rpoAtRisk(input.commits, t, now);
    if (risk) warn("RPO_AT_RISK", risk);
  }

  if (input.verification && (REPLICATING_STATES.has(s) || s === "paused") && input.newestCutoffAt !== undefined) {
    const message = notVerified(input.verification, now);
    if (message) warn("POINT_NOT_VERIFIED", message);
  }

  for (const c of input.certificates ?? []) {
    const message = certificateExpiring(c, now);
    if (message) warn("CERT_EXPIRING", message);
  }

  reasons.sort((a, b) => (a.level === b.level ? ORDER.indexOf(a.code) - ORDER.indexOf(b.code) : a.level === "critical" ? -1 : 1));
  const level: HealthLevel = reasons.some((r) => r.level === "critical") ? "critical" : reasons.length > 0 ? "warning" : "normal";
  return { level, reasons, counts };
}

/** Within a level, causes before symptoms: a skipped or failed cycle explains a late point. */
const ORDER: readonly HealthReasonCode[] = [
  "RESYNC_REQUIRED",
  "REPLICATION_FAILED",
  "AGENT_SILENT",
  "RPO_EXCEEDED",
  "STATE_PAUSED",
  "CYCLES_SKIPPED",
  "STATE_RESYNCHRONISING",
  "STATE_INITIAL_REPLICATION",
  "CYCLE_FAILED",
  "POINT_LATE",
  "NO_POINT_FOR_AN_HOUR",
  "CYCLES_MISSED",
  "RPO_AT_RISK",
  "CERT_EXPIRING",
  "POINT_NOT_VERIFIED",
];

/**
 * The POINT_NOT_VERIFIED message when no drill verified a point within the window (measured from
 * the last verified drill's end, else from when the policy started asking for drills).
 */
export function notVerified(v: VerificationHealth, now: number): string | undefined {
  const from = Math.max(v.lastVerified?.finishedAt ?? 0, v.requiredSince);
  if (now - from <= v.windowSeconds * 1000) return undefined;
  const last = v.lastVerified
    ? `the last verified point is ${v.lastVerified.pointId} (drill ended ${new Date(v.lastVerified.finishedAt).toISOString()})`
    : "no point was ever verified";
  const d = v.lastDrill;
  const failed =
    d && d.result === "failed"
      ? `; the last drill (${d.pointId}, ${new Date(d.finishedAt).toISOString()}) failed its ${d.failedCheck ?? "?"} check${d.message ? `: ${d.message}` : ""}`
      : "";
  return `no recovery point was verified within the policy's window of ${v.windowSeconds} s: ${last}${failed}; see 'qreplica points', run 'qreplica verify VM --wait'`;
}

const CERT_FIX: Record<CertificateExpiry["which"], string> = {
  site: "on this host run 'qreplica pki request', sign the request on the CA host ('qreplica pki sign'), and put the new certificate at the same path: the site serves it to new connections within a minute, without a restart",
  agent:
    "on the agent's host run 'qreplica pki request', sign the request on the CA host ('qreplica pki sign --role agent'), and put the new certificate at the agent's certFile: the agent uses it at its next connection",
};

/** The CERT_EXPIRING message for `c`, or undefined when it is valid for more than 30 days. */
export function certificateExpiring(c: CertificateExpiry, now: number): string | undefined {
  const left = c.notAfter - now;
  if (left >= CERT_EXPIRY_WARNING_MS) return undefined;
  const owner = c.which === "site" ? `this site's certificate${c.file ? ` ${c.file}` : ""}` : "the primary agent's certificate";
  const when = new Date(c.notAfter).toISOString();
  const state = left <= 0 ? `expired at ${when}` : `expires at ${when} (in ${Math.ceil(left / (24 * 3600 * 1000))} days)`;
  return `${owner} (CN ${c.commonName}) ${state}; ${CERT_FIX[c.which]}`;
}

type Add = (code: HealthReasonCode, message: string) => void;

function lagRules(input: HealthInput, t: HealthThresholds, now: number, crit: Add, warn: Add): void {
  const age = input.newestCutoffAt === undefined ? undefined : Math.max(0, now - input.newestCutoffAt);
  if (age !== undefined) {
    if (age > t.rpoAlertSeconds * 1000) crit("RPO_EXCEEDED", `the newest point is ${secs(age)} old, over the RPO alert threshold of ${t.rpoAlertSeconds} s`);
    else if (age > 2 * t.frequencySeconds * 1000) warn("POINT_LATE", `the newest point is ${secs(age)} old, over twice the frequency (${t.frequencySeconds} s)`);
    if (age > t.noPointWarnSeconds * 1000) warn("NO_POINT_FOR_AN_HOUR", `no recovery point for ${secs(age)} (over ${t.noPointWarnSeconds} s)`);
  }
  if (!input.agentConnected) {
    const since = input.lastActivityAt ?? input.watchingSince;
    const silent = now - since;
    if (silent > t.silentAfterSeconds * 1000) {
      const seen = input.lastActivityAt === undefined ? "since the site started" : `since ${new Date(input.lastActivityAt).toISOString()}`;
      crit("AGENT_SILENT", `the primary's agent has not been connected ${seen} (${secs(silent)}, over ${t.silentAfterSeconds} s)`);
    }
  }
}

/**
 * Successful, failed and missed cycles in the window [now - windowSeconds, now]. A slot is due one
 * frequency after each incremental cut-off (after the commit of a full or resync cycle, which take
 * as long as they take); a slot is missed when no cut-off came within half a frequency of it, and
 * a failed attempt fills a slot (it is counted as failed, not missed). The open interval since the
 * newest cut-off counts too, so an agent that stopped misses cycles as time passes.
 */
export function countCycles(input: Pick<HealthInput, "commits" | "failures" | "state">, t: Pick<HealthThresholds, "frequencySeconds" | "windowSeconds">, now: number): CycleCounts {
  const from = now - t.windowSeconds * 1000;
  const f = t.frequencySeconds * 1000;
  const commits = input.commits;
  const succeeded = commits.filter((c) => c.committedAt >= from && c.committedAt <= now).length;
  const failedIn = (a: number, b: number) => input.failures.filter((x) => x > a && x <= b).length;
  const failed = failedIn(from, now);
  let missed = 0;
  const slotsMissed = (start: number, end: number) => {
    const n = Math.max(0, Math.floor((end - start) / f - 0.5));
    let inWindow = 0;
    for (let k = 1; k <= n; k++) if (start + k * f >= from && start + k * f <= now) inWindow++;
    return Math.max(0, inWindow - failedIn(Math.max(start, from), end));
  };
  for (let i = 1; i < commits.length; i++) {
    const prev = commits[i - 1]!;
    if (commits[i]!.cutoffAt < from - f) continue;
    missed += slotsMissed(slotStart(prev), commits[i]!.cutoffAt);
  }
  const last = commits.at(-1);
  if (last && REPLICATING_STATES.has(input.state)) missed += slotsMissed(slotStart(last), now);
  return { succeeded, failed, missed };
}

const slotStart = (c: CycleRecord) => (c.kind === "incremental" ? c.cutoffAt : c.committedAt);

/**
 * The guest changes data faster than the link has been delivering it: over the last incremental
 * cycles in the window, the time spent replicating is more than `rpoAtRiskUtilisation` of the time
 * between their cut-offs. Cycles then run back to back, and the next burst of changes overruns
 * the RPO. (The change rate is bytes per second between cut-offs, the delivery rate bytes per
 * second of cycle time, so their ratio is duration over interval.)
 */
function rpoAtRisk(commits: readonly CycleRecord[], t: HealthThresholds, now: number): string | undefined {
  const from = now - t.windowSeconds * 1000;
  const recent: Array<{ c: CycleRecord; gap: number }> = [];
  for (let i = commits.length - 1; i >= 1 && recent.length < 10; i--) {
    const c = commits[i]!;
    if (c.committedAt < from) break;
    if (c.kind !== "incremental") continue;
    recent.push({ c, gap: c.cutoffAt - commits[i - 1]!.cutoffAt });
  }
  if (recent.length < 3) return undefined;
  const busy = recent.reduce((n, r) => n + r.c.durationMs, 0);
  const span = recent.reduce((n, r) => n + r.gap, 0);
  const bytes = recent.reduce((n, r) => n + r.c.dataBytes, 0);
  if (span <= 0 || busy / span <= t.rpoAtRiskUtilisation) return undefined;
  const changeRate = bytes / (span / 1000);
  const deliveryRate = busy > 0 ? bytes / (busy / 1000) : Infinity;
  return (
    `the guest changed ${Math.round(changeRate)} B/s over the last ${recent.length} cycles and the link delivered ${Math.round(deliveryRate)} B/s: ` +
    `it was busy ${Math.round((busy / span) * 100)}% of the time (over ${Math.round(t.rpoAtRiskUtilisation * 100)}%)`
  );
}
