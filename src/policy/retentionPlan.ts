/**
 * Which recovery points retention keeps: a pure function of the points, the tiers and the time.
 * The site thins by merging away every point this does not keep (src/site/retention.ts).
 *
 * The rules, in order; a point is kept when any of them keeps it:
 * 1. Held: a point under a running test failover or failover, a point under its policy's lock,
 *    and the last clean point before a suspect one (until an operator clears the suspicion) are
 *    never removed.
 * 2. The newest point, always; and the `minPoints` newest, whatever the tiers say.
 * 3. Tiers. A tier with `everySeconds` 0 keeps every point younger than `keepForSeconds`. Any
 *    other tier cuts time into slots of `everySeconds` aligned to the Unix epoch in UTC (so
 *    daily slots start at 00:00 UTC and weekly ones on Thursdays, the epoch's weekday) and keeps
 *    one point of every slot that overlaps the last `keepForSeconds`: a slot's newest
 *    application-consistent point when it has one, else its first point.
 *
 * Why a whole slot expires at once, rather than each point at its own age: the choice within a
 * slot is made among the points that still exist, and thinning removes the others. If a slot's
 * chosen point could expire while the slot still counted, the choice would move to a newer point
 * of the same slot that was thinned long ago (or, worse, one kept only because it was held, which
 * then stays for no reason). With whole slots the kept set only changes when points arrive or a
 * slot leaves a tier's span, and planning the kept set again keeps exactly that set. So a
 * tier's point stays at least `keepForSeconds` after its cut-off and at most one slot longer.
 *
 * Why the newest application-consistent point and otherwise the first: an application-consistent
 * point is the one worth keeping when a tier thins (the rule); among several the newest
 * loses the least data. Without one, the first point of a slot is stable: later points of the
 * slot cannot displace it, so a finer tier's choice is also a coarser tier's (slots nest when
 * each `everySeconds` divides the next, as 1 h, 1 d and 1 w do).
 */
import type { RetentionTier } from "./types.js";

export type PointConsistency = "application" | "crash";

export interface PlanPoint {
  id: string;
  /** Orders points; the newest has the highest. */
  seq: number;
  /** The point's cut-off, ms since the epoch. */
  cutoffMs: number;
  consistency: PointConsistency;
  /** Under a running test failover or failover: never removed. */
  held?: boolean;
  /** Under its policy's lock (lockedUntil in the future): never removed. */
  locked?: boolean;
  /** The newest point before the first suspect one (encryption signal): kept until the suspicion is cleared. */
  lastClean?: boolean;
}

export interface RetentionSpec {
  tiers: readonly RetentionTier[];
  minPoints: number;
  /** The policy's lock on new points (ReplicationPolicy.retention.lockSeconds); not used by the plan itself. */
  lockSeconds?: number;
}

export type KeepReason = "held" | "locked" | "last-clean" | "newest" | "min-points" | `tier-${number}`;

export interface RetentionPlan {
  /** Points kept, oldest first. */
  keep: string[];
  /** Points to merge away, oldest first. */
  drop: string[];
  /** Why each kept point is kept (tier-N is the N-th tier of the spec, from 0). */
  reasons: Map<string, KeepReason[]>;
}

export function planRetention(points: readonly PlanPoint[], spec: RetentionSpec, nowMs: number): RetentionPlan {
  const sorted = [...points].sort((a, b) => a.seq - b.seq);
  const reasons = new Map<string, KeepReason[]>();
  const keep = (p: PlanPoint, why: KeepReason) => {
    const list = reasons.get(p.id);
    if (list) list.push(why);
    else reasons.set(p.id, [why]);
  };
  for (const p of sorted) {
    if (p.held) keep(p, "held");
    if (p.locked) keep(p, "locked");
    if (p.lastClean) keep(p, "last-clean");
  }
  const newest = sorted.at(-1);
  if (newest) keep(newest, "newest");
  for (const p of sorted.slice(Math.max(0, sorted.length - Math.max(0, spec.minPoints)))) if (p !== newest) keep(p, "min-points");
  spec.tiers.forEach((tier, i) => {
    for (const p of tierChoice(sorted, tier, nowMs)) keep(p, `tier-${i}`);
  });
  return {
    keep: sorted.filter((p) => reasons.has(p.id)).map((p) => p.id),
    drop: sorted.filter((p) => !reasons.has(p.id)).map((p) => p.id),
    reasons,
  };
}

/** The points one tier keeps (see the module comment). */
function tierChoice(sorted: readonly PlanPoint[], tier: RetentionTier, nowMs: number): PlanPoint[] {
  const keepForMs = tier.keepForSeconds * 1000;
  const horizon = nowMs - keepForMs;
  if (tier.everySeconds <= 0) return sorted.filter((p) => p.cutoffMs > horizon);
  const slotMs = tier.everySeconds * 1000;
  const chosen = new Map<number, PlanPoint>();
  for (const p of sorted) {
    const slot = Math.floor(p.cutoffMs / slotMs);
    // The slot overlaps the span when it ends after the horizon.
    if ((slot + 1) * slotMs <= horizon) continue;
    const current = chosen.get(slot);
    if (!current || (p.consistency === "application" && (current.consistency !== "application" || p.seq > current.seq))) chosen.set(slot, p);
  }
  return [...chosen.values()];
}

/** A tier's span is finite and its slot not longer than the span, else it would keep nothing useful. */
export function retentionSpecProblems(spec: RetentionSpec): string[] {
  const problems: string[] = [];
  if (!Number.isInteger(spec.minPoints) || spec.minPoints < 1) problems.push(`minPoints must be an integer of at least 1 (the newest point is always kept), not ${spec.minPoints}`);
  spec.tiers.forEach((t, i) => {
    if (!(t.everySeconds >= 0) || !Number.isFinite(t.everySeconds)) problems.push(`tiers[${i}].everySeconds must be 0 (every point) or a positive number of seconds`);
    if (!(t.keepForSeconds > 0) || !Number.isFinite(t.keepForSeconds)) problems.push(`tiers[${i}].keepForSeconds must be a positive number of seconds`);
  });
  return problems;
}
