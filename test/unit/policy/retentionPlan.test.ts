import { describe, expect, it } from "vitest";
import { planRetention, retentionSpecProblems, type PlanPoint, type RetentionSpec } from "../../../src/policy/retentionPlan.js";

const S = 1000;
const MIN = 60 * S;
const H = 60 * MIN;
const D = 24 * H;
const W = 7 * D;
/** 2026-11-02 00:00 UTC, a Monday. */
const T0 = Date.UTC(2026, 10, 2);

const pt = (seq: number, cutoffMs: number, extra: Partial<PlanPoint> = {}): PlanPoint => ({ id: `rp-${seq}`, seq, cutoffMs, consistency: "crash", ...extra });

describe("retention planner: the simple rules", () => {
  it("tiers [] and minPoints N keep the N newest (today's maxPoints)", () => {
    const points = Array.from({ length: 10 }, (_, i) => pt(i + 1, T0 + i * MIN));
    const plan = planRetention(points, { tiers: [], minPoints: 4 }, T0 + D);
    expect(plan.keep).toEqual(["rp-7", "rp-8", "rp-9", "rp-10"]);
    expect(plan.drop).toEqual(["rp-1", "rp-2", "rp-3", "rp-4", "rp-5", "rp-6"]);
  });

  it("the newest point is kept even when every tier has passed it; held and locked points are never dropped", () => {
    const points = [pt(1, T0), pt(2, T0 + H, { held: true }), pt(3, T0 + 2 * H, { locked: true }), pt(4, T0 + 3 * H), pt(5, T0 + 4 * H)];
    const plan = planRetention(points, { tiers: [{ everySeconds: 0, keepForSeconds: 60 }], minPoints: 1 }, T0 + 30 * D);
    expect(plan.keep).toEqual(["rp-2", "rp-3", "rp-5"]);
    expect(plan.reasons.get("rp-2")).toEqual(["held"]);
    expect(plan.reasons.get("rp-3")).toEqual(["locked"]);
    expect(plan.reasons.get("rp-5")).toEqual(["newest"]);
  });

  it("a slot keeps its newest application-consistent point, else its first; slots align to the epoch in UTC", () => {
    const points = [
      pt(1, T0 + 5 * MIN),
      pt(2, T0 + 20 * MIN, { consistency: "application" }),
      pt(3, T0 + 40 * MIN, { consistency: "application" }),
      pt(4, T0 + 50 * MIN),
      // next hour: crash only
      pt(5, T0 + H + 1 * MIN),
      pt(6, T0 + H + 30 * MIN),
      // a point in the next hour keeps the tier from choosing the newest as "first"
      pt(7, T0 + 2 * H + 10 * MIN),
      pt(8, T0 + 2 * H + 20 * MIN),
    ];
    const plan = planRetention(points, { tiers: [{ everySeconds: 3600, keepForSeconds: 48 * 3600 }], minPoints: 1 }, T0 + 3 * H);
    expect(plan.keep).toEqual(["rp-3", "rp-5", "rp-7", "rp-8"]);
    expect(plan.reasons.get("rp-8")).toEqual(["newest"]);
  });

  it("a slot counts while it overlaps the span: its point stays at least keepFor and less than keepFor + every", () => {
    const points = [pt(1, T0 + 10 * MIN), pt(2, T0 + H + 10 * MIN), pt(3, T0 + 2 * H + 10 * MIN), pt(4, T0 + 10 * H)];
    const spec = { tiers: [{ everySeconds: 3600, keepForSeconds: 2 * 3600 }], minPoints: 1 };
    // Slot [T0+H, T0+2H) overlaps (now-2h, now] iff now < T0+4H.
    expect(planRetention(points, spec, T0 + 4 * H - 1).keep).toEqual(["rp-2", "rp-3", "rp-4"]);
    expect(planRetention(points, spec, T0 + 4 * H).keep).toEqual(["rp-3", "rp-4"]);
  });

  it("planning the kept set again keeps all of it (no point comes back or goes later without time passing)", () => {
    const points: PlanPoint[] = [];
    for (let i = 0; i < 2000; i++) points.push(pt(i + 1, T0 + i * 7 * MIN, { consistency: i % 13 === 0 ? "application" : "crash", held: i === 500 }));
    const spec = {
      tiers: [
        { everySeconds: 0, keepForSeconds: 7200 },
        { everySeconds: 3600, keepForSeconds: 86400 },
        { everySeconds: 86400, keepForSeconds: 7 * 86400 },
      ],
      minPoints: 3,
    };
    const now = T0 + 2000 * 7 * MIN;
    const once = planRetention(points, spec, now);
    const kept = points.filter((p) => once.keep.includes(p.id));
    expect(planRetention(kept, spec, now).keep).toEqual(once.keep);
  });

  it("refuses specs that make no sense, naming the field", () => {
    expect(retentionSpecProblems({ tiers: [{ everySeconds: 3600, keepForSeconds: 0 }], minPoints: 0 })).toEqual([
      "minPoints must be an integer of at least 1 (the newest point is always kept), not 0",
      "tiers[0].keepForSeconds must be a positive number of seconds",
    ]);
    expect(retentionSpecProblems({ tiers: [{ everySeconds: 0, keepForSeconds: 1 }], minPoints: 1 })).toEqual([]);
  });
});

/**
 * The expected set, written from the tiers' promise over the FULL history of points (never from
 * what is left after thinning): what the planner keeps from the survivors must be exactly this.
 */
class Promise_ {
  /** per tier: slot -> the slot's promised point over every point ever taken in it */
  private readonly slots: Array<Map<number, PlanPoint>>;
  readonly all: PlanPoint[] = [];

  constructor(private readonly spec: RetentionSpec) {
    this.slots = spec.tiers.map(() => new Map());
  }

  add(p: PlanPoint): void {
    this.all.push(p);
    this.spec.tiers.forEach((t, i) => {
      if (t.everySeconds === 0) return;
      const slot = Math.floor(p.cutoffMs / (t.everySeconds * 1000));
      const m = this.slots[i]!;
      const prev = m.get(slot);
      // Newest application-consistent point of the slot, else the first point of the slot.
      if (prev === undefined) m.set(slot, p);
      else if (p.consistency === "application") m.set(slot, p);
    });
  }

  expected(nowMs: number, held: ReadonlySet<string>): Set<string> {
    const out = new Set<string>();
    const n = this.all.length;
    for (let i = Math.max(0, n - this.spec.minPoints); i < n; i++) out.add(this.all[i]!.id);
    for (const id of held) out.add(id);
    this.spec.tiers.forEach((t, i) => {
      const keepFor = t.keepForSeconds * 1000;
      if (t.everySeconds === 0) {
        for (let j = n - 1; j >= 0 && this.all[j]!.cutoffMs > nowMs - keepFor; j--) out.add(this.all[j]!.id);
        return;
      }
      const every = t.everySeconds * 1000;
      // Every slot that ends after the horizon, up to the one holding now.
      for (let slot = Math.floor((nowMs - keepFor) / every); slot * every <= nowMs; slot++) {
        const p = this.slots[i]!.get(slot);
        if (p && (slot + 1) * every > nowMs - keepFor) out.add(p.id);
      }
    });
    return out;
  }
}

describe("retention planner over a simulated month (injected clock)", () => {
  const tiers = [
    { everySeconds: 0, keepForSeconds: 2 * 3600 },
    { everySeconds: 3600, keepForSeconds: 48 * 3600 },
    { everySeconds: 86400, keepForSeconds: 30 * 86400 },
    { everySeconds: 7 * 86400, keepForSeconds: 12 * 7 * 86400 },
  ];

  for (const { name, stepMs, appEveryMs, days: spanDays, weeks: spanWeeks } of [
    { name: "a point every 5 min, application-consistent every 4 h, 30 days", stepMs: 5 * MIN, appEveryMs: 4 * H, days: 30, weeks: 5 },
    // Kept shorter than a month only to keep the run short: 28,800 cycles.
    { name: "a point every 30 s, application-consistent every 6 h, 10 days", stepMs: 30 * S, appEveryMs: 6 * H, days: 10, weeks: 2 },
  ]) {
    it(`${name}: after every cycle the kept set is exactly what the tiers promise`, () => {
      const spec = { tiers, minPoints: 3 };
      const promise = new Promise_(spec);
      let existing: PlanPoint[] = [];
      // A test failover holds one point from day 3 to day 5, and one on the last day.
      const held = new Map<string, { from: number; to: number }>();
      const steps = Math.round((spanDays * D) / stepMs);
      let maxKept = 0;
      let seq = 0;
      // Cut-offs a little after the cycle start, as real ones are, with one missed cycle a day.
      for (let k = 0; k < steps; k++) {
        const now = T0 + k * stepMs + 7 * S;
        if (k % Math.round(D / stepMs) === 100) continue;
        const cutoff = T0 + k * stepMs + 3 * S;
        const p = pt(++seq, cutoff, { consistency: (cutoff - 3 * S - T0) % appEveryMs === 0 ? "application" : "crash" });
        promise.add(p);
        existing.push(p);
        if (now >= T0 + 3 * D && held.size === 0) held.set(existing[existing.length - 40]!.id, { from: now, to: T0 + 5 * D });
        if (now >= T0 + (spanDays - 1) * D && held.size === 1) held.set(p.id, { from: now, to: Infinity });
        const heldNow = new Set([...held].filter(([, h]) => now >= h.from && now < h.to).map(([id]) => id));
        const input = existing.map((x) => (heldNow.has(x.id) ? { ...x, held: true } : { ...x, held: false }));
        const plan = planRetention(input, spec, now);
        const expected = promise.expected(now, heldNow);
        const ids = new Set(existing.map((x) => x.id));
        const lost = [...expected].filter((id) => !ids.has(id));
        if (lost.length) throw new Error(`step ${k}: promised points were thinned earlier: ${lost.join(", ")}`);
        const kept = new Set(plan.keep);
        if (kept.size !== expected.size || [...expected].some((id) => !kept.has(id))) {
          throw new Error(`step ${k} at ${new Date(now).toISOString()}: kept ${[...kept].join(",")} but the tiers promise ${[...expected].join(",")}`);
        }
        existing = existing.filter((x) => kept.has(x.id));
        maxKept = Math.max(maxKept, existing.length);
      }
      const end = T0 + steps * stepMs;
      const ages = existing.map((x) => end - x.cutoffMs);
      // What the operator reads in the tiers: every point of the last 2 h; one per hour for 48 h;
      // one per day for the 30 days; one per week (the weekly slots all still overlap 12 weeks).
      const lastTwoHours = existing.filter((x) => end - x.cutoffMs < 2 * H).length;
      expect(lastTwoHours).toBeGreaterThanOrEqual(Math.floor((2 * H) / stepMs) - 1);
      const hours = new Set(existing.filter((x) => end - x.cutoffMs < 48 * H).map((x) => Math.floor(x.cutoffMs / H)));
      expect(hours.size).toBeGreaterThanOrEqual(48);
      const days = new Set(existing.map((x) => Math.floor(x.cutoffMs / D)));
      expect(days.size).toBe(spanDays);
      const weeks = new Set(existing.map((x) => Math.floor(x.cutoffMs / W)));
      expect(weeks.size).toBe(spanWeeks);
      expect(Math.max(...ages)).toBeLessThan((spanDays + 1) * D);
      // The oldest point of every day older than 48 h is the application-consistent one.
      for (const x of existing.filter((y) => end - y.cutoffMs > 50 * H && !held.has(y.id))) expect(x.consistency, x.id).toBe("application");
      // The point held since day 3 went once its test ended (it was not promised by the tiers).
      const firstHeld = [...held.keys()][0]!;
      expect(existing.some((x) => x.id === firstHeld)).toBe(false);
      expect(existing.some((x) => x.id === [...held.keys()][1])).toBe(true);
      expect(maxKept).toBeLessThan(Math.ceil((2 * H) / stepMs) + 48 + 31 + 6 + 5);
    }, 120_000);
  }
});
