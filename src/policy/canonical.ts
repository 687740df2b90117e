/**
 * One canonical form per policy, so that applying the same spec again (reordered keys, "60m"
 * for "1h", comments) is recognised as no change, and a readable diff between two versions.
 */
import { stringify as toYaml } from "yaml";
import type { ReplicationPolicy, TimeWindow, VerificationPolicy } from "./types.js";
import { DAY_NAMES, formatDuration, formatRate } from "./units.js";

/** A policy's human form (the YAML fields), keys in one fixed order, units in their shortest form. */
export type PolicySpec = Record<string, unknown>;

const windowSpec = (w: TimeWindow) => ({ ...(w.days && w.days.length ? { days: w.days.map((d) => DAY_NAMES[d]) } : {}), from: w.from, to: w.to });

/** The YAML form of a policy, every default written out: what `policy show` prints. */
export function policyToSpec(p: ReplicationPolicy): PolicySpec {
  const f = p.frequency;
  return {
    name: p.name,
    ...(p.description ? { description: p.description } : {}),
    frequency: f.kind === "continuous" ? "continuous" : formatDuration(f.seconds),
    ...(f.kind === "continuous" ? { minGap: formatDuration(f.minGapSeconds) } : {}),
    retention: {
      minPoints: p.retention.minPoints,
      tiers: p.retention.tiers.map((t) => ({ every: t.everySeconds === 0 ? "all" : formatDuration(t.everySeconds), keepFor: formatDuration(t.keepForSeconds) })),
      ...(p.retention.lockSeconds !== undefined ? { lockFor: formatDuration(p.retention.lockSeconds) } : {}),
    },
    ...(p.applicationConsistent
      ? { applicationConsistent: { every: formatDuration(p.applicationConsistent.everySeconds), freezeTimeout: formatDuration(p.applicationConsistent.freezeTimeoutMs / 1000) } }
      : {}),
    compressionLevel: p.compressionLevel,
    bandwidth: p.bandwidth.map((b) => ({ limit: formatRate(b.bytesPerSecond), ...(b.window ? { window: windowSpec(b.window) } : {}) })),
    initialReplication: p.initialReplication.kind === "now" ? "now" : { at: p.initialReplication.at },
    resync: p.resync.mode === "manual" ? { mode: "manual" } : { mode: "automatic", ...(p.resync.window ? { window: windowSpec(p.resync.window) } : {}) },
    rpoAlert: formatDuration(p.rpoAlertSeconds),
    ...(p.verification ? { verification: verificationSpec(p.verification) } : {}),
  };
}

function verificationSpec(v: VerificationPolicy): PolicySpec {
  const c = v.checks;
  return {
    every: formatDuration(v.everySeconds),
    window: formatDuration(v.windowSeconds),
    timeout: formatDuration(v.timeoutSeconds),
    checks: {
      ...(c.serialPattern !== undefined ? { serialPattern: c.serialPattern } : {}),
      ...(c.guestAgent ? { guestAgent: true } : {}),
      ...(c.tcpPort !== undefined ? { tcpPort: c.tcpPort } : {}),
      ...(c.guestCommand ? { guestCommand: c.guestCommand } : {}),
    },
  };
}

export function policyToYaml(p: ReplicationPolicy): string {
  return toYaml(policyToSpec(p), { flowCollectionPadding: true });
}

/** JSON with every object's keys sorted: equal policies give equal strings, whatever their key order. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) =>
    v !== null && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

export function samePolicy(a: ReplicationPolicy, b: ReplicationPolicy): boolean {
  return canonicalJson(a) === canonicalJson(b);
}

/** One changed field: its path in the YAML form and its value before and after (undefined: absent). */
export interface PolicyChange {
  path: string;
  from?: string;
  to?: string;
}

/** The leaves of a spec by path ("retention.tiers[1].every" -> "1h"). */
function leaves(spec: unknown, prefix = "", out = new Map<string, string>()): Map<string, string> {
  if (Array.isArray(spec)) {
    spec.forEach((v, i) => leaves(v, `${prefix}[${i}]`, out));
    if (spec.length === 0) out.set(prefix, "[]");
  } else if (spec !== null && typeof spec === "object") {
    for (const [k, v] of Object.entries(spec)) leaves(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out.set(prefix, String(spec));
  }
  return out;
}

/** What changed from `a` to `b`, field by field in the YAML form's order. */
export function diffPolicies(a: ReplicationPolicy | undefined, b: ReplicationPolicy): PolicyChange[] {
  const before = a ? leaves(policyToSpec(a)) : new Map<string, string>();
  const after = leaves(policyToSpec(b));
  const changes: PolicyChange[] = [];
  for (const [path, to] of after) {
    const from = before.get(path);
    if (from !== to) changes.push({ path, ...(from !== undefined ? { from } : {}), to });
  }
  for (const [path, from] of before) if (!after.has(path)) changes.push({ path, from });
  return changes;
}

/** "  frequency: 1h -> 1s" lines; "(no change)" when there is none. */
export function formatDiff(changes: PolicyChange[]): string {
  if (changes.length === 0) return "(no change)";
  return changes.map((c) => (c.from === undefined ? `+ ${c.path}: ${c.to}` : c.to === undefined ? `- ${c.path}: ${c.from}` : `~ ${c.path}: ${c.from} -> ${c.to}`)).join("\n");
}
