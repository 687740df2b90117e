/** Time windows of a policy (bandwidth, resync) and the agent's per-site pacing, with injected clocks. */
import { describe, expect, it } from "vitest";
import { bandwidthAt, inWindow } from "../../../src/policy/windows.js";
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
