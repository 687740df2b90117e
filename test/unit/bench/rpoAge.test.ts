import { describe, expect, it } from "vitest";
import { ageSamples } from "../../../bench/rpoUnderLoad.js";
import type { CommittedCycle } from "../../../bench/lib/replicateMix.js";

const cycle = (cutoff: number, committed: number): CommittedCycle => ({
  cycleSeq: 0,
  kind: "incremental",
  cutoffAt: new Date(cutoff).toISOString(),
  committedAt: new Date(committed).toISOString(),
  dataBytes: 0,
  zeroBytes: 0,
  wireBytes: 0,
  extents: 0,
  durationMs: 0,
});

describe("rpo-under-load's newest-point age", () => {
  it("is the time since the cut-off of the newest point committed by then: a sawtooth", () => {
    const t0 = 1_000_000;
    // Points cut at 0 s (committed at 1 s) and at 3 s (committed at 5 s).
    const ages = ageSamples([cycle(t0, t0 + 1000), cycle(t0 + 3000, t0 + 5000)], t0 + 1000, t0 + 6000);
    expect(ages[0]).toBeCloseTo(1, 5); // at 1 s: the first point, cut 1 s ago
    expect(ages[39]).toBeCloseTo(4.9, 5); // at 4.9 s: still the first point
    expect(ages[40]).toBeCloseTo(2, 5); // at 5 s the second point lands: cut 2 s ago
    expect(Math.max(...ages)).toBeCloseTo(4.9, 5);
  });

  it("ignores a point committed after the window and counts nothing before the first commit", () => {
    const t0 = 2_000_000;
    expect(ageSamples([cycle(t0 + 100, t0 + 9000)], t0, t0 + 1000)).toEqual([]);
  });

  it("never goes back to an older cut-off when commits land out of order", () => {
    const t0 = 3_000_000;
    const ages = ageSamples([cycle(t0 + 2000, t0 + 2500), cycle(t0, t0 + 3000)], t0 + 2500, t0 + 3000);
    expect(ages.every((a) => a <= 1.0 + 1e-9)).toBe(true);
  });
});
