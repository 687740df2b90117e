/**
 * The effective policy on the wire (replication.proto's EffectivePolicy), both ways: the site
 * sends what the agent needs of a ReplicationPolicy; the agent reads it back into AgentPolicy.
 */
import { ResyncMode, type EffectivePolicy, type PolicyTimeWindow } from "../gen/qreplica/v1/replication.js";
import type { ReplicationPolicy, TimeWindow } from "./types.js";

const windowToWire = (w: TimeWindow): PolicyTimeWindow => ({ days: w.days ?? [], from: w.from, to: w.to });
const windowFromWire = (w: PolicyTimeWindow): TimeWindow => ({ ...(w.days.length ? { days: [...w.days] } : {}), from: w.from, to: w.to });

export function effectivePolicyToWire(policy: ReplicationPolicy, version: number): EffectivePolicy {
  const f = policy.frequency;
  return {
    name: policy.name,
    version,
    frequency:
      f.kind === "interval" ? { $case: "intervalSeconds", value: Math.max(1, Math.round(f.seconds)) } : { $case: "continuousMinGapMs", value: Math.round(f.minGapSeconds * 1000) },
    compressionLevel: policy.compressionLevel,
    appConsistentEverySeconds: policy.applicationConsistent?.everySeconds ?? 0,
    freezeTimeoutMs: policy.applicationConsistent?.freezeTimeoutMs ?? 0,
    bandwidth: policy.bandwidth.map((b) => ({ bytesPerSecond: BigInt(b.bytesPerSecond), window: b.window && windowToWire(b.window) })),
    resyncMode: policy.resync.mode === "manual" ? ResyncMode.RESYNC_MODE_MANUAL : ResyncMode.RESYNC_MODE_AUTOMATIC,
    resyncWindow: policy.resync.mode === "automatic" && policy.resync.window ? windowToWire(policy.resync.window) : undefined,
    initialReplicationAt: policy.initialReplication.kind === "at" ? new Date(policy.initialReplication.at) : undefined,
  };
}

/** What the agent runs its cycles with, from the site's policy or its own config. */
export interface AgentPolicy {
  /** "config" when the site sent none (an older site, or a VM bound to no policy). */
  name: string;
  version: number;
  /** Milliseconds from the end of one cycle to the start of the next (continuous: the floor between them). */
  frequency: { kind: "interval"; ms: number } | { kind: "continuous"; minGapMs: number };
  compressionLevel: number;
  applicationConsistent?: { everySeconds: number; freezeTimeoutMs: number };
  bandwidth: Array<{ bytesPerSecond: number; window?: TimeWindow }>;
  resync: { mode: "automatic" | "manual"; window?: TimeWindow };
  initialReplicationAt?: Date;
}

export function agentPolicyFromWire(p: EffectivePolicy): AgentPolicy {
  const f = p.frequency;
  return {
    name: p.name,
    version: p.version,
    frequency: f?.$case === "continuousMinGapMs" ? { kind: "continuous", minGapMs: f.value } : { kind: "interval", ms: Math.max(1, f?.value ?? 30) * 1000 },
    compressionLevel: p.compressionLevel || 1,
    ...(p.appConsistentEverySeconds > 0 ? { applicationConsistent: { everySeconds: p.appConsistentEverySeconds, freezeTimeoutMs: p.freezeTimeoutMs } } : {}),
    bandwidth: p.bandwidth.map((b) => ({ bytesPerSecond: Number(b.bytesPerSecond), ...(b.window ? { window: windowFromWire(b.window) } : {}) })),
    resync: p.resyncMode === ResyncMode.RESYNC_MODE_MANUAL ? { mode: "manual" } : { mode: "automatic", ...(p.resyncWindow ? { window: windowFromWire(p.resyncWindow) } : {}) },
    ...(p.initialReplicationAt ? { initialReplicationAt: p.initialReplicationAt } : {}),
  };
}
