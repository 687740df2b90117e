/** The agent's pacing per replica site, on an injected clock: rate held over any stretch, one second of burst, 0 unlimited. */
import { describe, expect, it } from "vitest";
import { SiteBandwidth } from "../../../replica-agent/daemon/bandwidth.js";

const MiB = 1024 * 1024;

describe("SiteBandwidth", () => {
  it("spaces sends so that bytes over time stay within the rate, after a burst of one second's worth", () => {
    let now = 1_000_000;
    const b = new SiteBandwidth(() => now);
    // Idle before: one second's worth goes at once.
    expect(b.reserve(1 * MiB, 1 * MiB)).toBe(0);
    // More at the same instant waits for its share: 4 MiB more at 1 MiB/s is 4 s.
    let waited = 0;
    for (let i = 0; i < 4; i++) waited = b.reserve(1 * MiB, 1 * MiB);
    expect(waited).toBe(4000);
    // Time passes as the caller waits; the next MiB is due one second after the last.
    now += 4000;
    expect(b.reserve(1 * MiB, 1 * MiB)).toBe(1000);
  });

  it("does not bank unused time beyond the burst, and 0 means unlimited", () => {
    let now = 0;
    const b = new SiteBandwidth(() => now);
    now += 60_000; // a minute idle
    expect(b.reserve(1 * MiB, 1 * MiB)).toBe(0);
    expect(b.reserve(1 * MiB, 1 * MiB)).toBe(1000);
    expect(b.reserve(100 * MiB, 0)).toBe(0);
  });

  it("is shared by every VM replicating to one site", () => {
    expect(SiteBandwidth.for("siteX:7443")).toBe(SiteBandwidth.for("siteX:7443"));
    expect(SiteBandwidth.for("siteX:7443")).not.toBe(SiteBandwidth.for("siteY:7443"));
  });
});
