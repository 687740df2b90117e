/** Time windows of a policy (bandwidth, resync) and the agent's per-site pacing, with injected clocks. */
import { describe, expect, it } from "vitest";
import { bandwidthAt, inWindow, nextOpening, openingPattern } from "../../../src/policy/windows.js";
import type { TimeWindow } from "../../../src/policy/types.js";
import { parsePolicyYaml } from "../../../src/policy/schema.js";
import { SiteBandwidth } from "../../../replica-agent/daemon/bandwidth.js";
import { resyncModeAt } from "../../../src/site/resyncWindows.js";

// Local times (windows are read in the host's local time). 2026-12-07 is a Monday.
const at = (day: number, h: number, m = 0) => new Date(2026, 11, day, h, m);
const MON = 7;
const TUE = 8;
const SAT = 12;
const SUN = 13;

describe("policy time windows", () => {
  it("match their days and hours; a window past midnight belongs to the day it started on", () => {
    const office = { days: [1, 2, 3, 4, 5], from: "08:00", to: "18:00" };
    expect(inWindow(office, at(MON, 8, 0))).toBe(true);
    expect(inWindow(office, at(MON, 17, 59))).toBe(true);
    expect(inWindow(office, at(MON, 18, 0))).toBe(false);
    expect(inWindow(office, at(MON, 7, 59))).toBe(false);
    expect(inWindow(office, at(SAT, 12, 0))).toBe(false);
    const night = { days: [1], from: "18:30", to: "06:00" };
    expect(inWindow(night, at(MON, 23, 0))).toBe(true);
    expect(inWindow(night, at(TUE, 3, 0))).toBe(true);
    expect(inWindow(night, at(MON, 3, 0))).toBe(false);
    expect(inWindow(night, at(TUE, 6, 0))).toBe(false);
    expect(inWindow({ from: "18:30", to: "06:00" }, at(SUN, 5, 59))).toBe(true);
  });

  it("give the first matching bandwidth limit, unlimited otherwise", () => {
    const p = parsePolicyYaml(`
name: b
bandwidth:
  - { limit: 50MiB/s, window: { days: weekdays, from: "08:00", to: "18:00" } }
  - { limit: 200MiB/s, window: { days: weekends, from: "00:00", to: "00:00" } }
`);
    expect(bandwidthAt(p.bandwidth, at(MON, 9))).toBe(50 * 1024 * 1024);
    expect(bandwidthAt(p.bandwidth, at(MON, 20))).toBe(0);
    expect(bandwidthAt(p.bandwidth, at(SAT, 9))).toBe(200 * 1024 * 1024);
    expect(bandwidthAt([], at(MON, 9))).toBe(0);
  });
});

describe("window openings (croner)", () => {
  const local = (y: number, mo: number, d: number, h: number, mi: number) => new Date(y, mo - 1, d, h, mi);

  it("time the next opening on the window's days, agreeing with inWindow", () => {
    const nightly: TimeWindow = { from: "18:30", to: "06:00" };
    expect(openingPattern(nightly)).toBe("30 18 * * *");
    // Friday 4 Dec 2026, noon: tonight at 18:30.
    expect(nextOpening(nightly, local(2026, 12, 4, 12, 0))).toEqual(local(2026, 12, 4, 18, 30));
    const weekdays: TimeWindow = { days: [5, 1, 2, 3, 4], from: "08:00", to: "18:00" };
    expect(openingPattern(weekdays)).toBe("0 8 * * 1,2,3,4,5");
    // After Friday's opening: Monday 08:00.
    const at = nextOpening(weekdays, local(2026, 12, 4, 9, 0))!;
    expect(at).toEqual(local(2026, 12, 7, 8, 0));
    expect(inWindow(weekdays, at)).toBe(true);
    expect(inWindow(weekdays, new Date(at.getTime() - 60_000))).toBe(false);
  });
});

describe("per-site bandwidth pacing", () => {
  it("lets a second's worth through after an idle spell, then paces to the rate; 0 is unlimited", () => {
    let now = 100_000;
    const b = new SiteBandwidth(() => now);
    const MiB = 1024 * 1024;
    expect(b.reserve(MiB, 0)).toBe(0);
    expect(b.reserve(MiB, MiB)).toBe(0);
    expect(b.reserve(MiB, MiB)).toBe(1000);
    expect(b.reserve(MiB, MiB)).toBe(2000);
    // 10 MiB more at 1 MiB/s from here: the last is released 10 s later, whatever the chunking.
    let last = 0;
    for (let i = 0; i < 40; i++) last = b.reserve(MiB / 4, MiB);
    expect(last).toBe(12_000);
    // Time passes: what was booked is spent; idle again, a second's burst.
    now += 60_000;
    expect(b.reserve(MiB, MiB)).toBe(0);
    // Two VMs to the same site share one pace.
    const shared = SiteBandwidth.for("site-b:7443");
    expect(SiteBandwidth.for("site-b:7443")).toBe(shared);
    expect(SiteBandwidth.for("site-c:7443")).not.toBe(shared);
  });
});

describe("a policy's resync mode at a time", () => {
  it("is automatic inside its window (or without one), waits outside it, and manual stays manual", () => {
    const windowed = parsePolicyYaml('name: w\nresync: { mode: automatic, window: { from: "18:30", to: "06:00" } }');
    expect(resyncModeAt(windowed, at(MON, 19))).toBe("automatic");
    expect(resyncModeAt(windowed, at(TUE, 5, 59))).toBe("automatic");
    expect(resyncModeAt(windowed, at(TUE, 12))).toBe("manual");
    expect(resyncModeAt(parsePolicyYaml("name: a"), at(TUE, 12))).toBe("automatic");
    expect(resyncModeAt(parsePolicyYaml("name: m\nresync: { mode: manual }"), at(MON, 19))).toBe("manual");
  });
});
