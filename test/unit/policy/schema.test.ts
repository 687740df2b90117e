import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { InvalidPolicyError } from "../../../src/policy/errors.js";
import { diffPolicies, formatDiff, policyToYaml, samePolicy } from "../../../src/policy/canonical.js";
import { parsePolicyYaml } from "../../../src/policy/schema.js";
import { defaultPolicy } from "../../../src/policy/defaultPolicy.js";

const GOLD = `
name: gold
frequency: 30s
retention:
  minPoints: 4
  tiers:
    - { every: all, keepFor: 2h }
    - { every: 1h, keepFor: 48h }
    - { every: 1d, keepFor: 30d }
    - { every: 1w, keepFor: 12w }
applicationConsistent: { every: 4h, freezeTimeout: 10s }
compressionLevel: 3
bandwidth:
  - { limit: 50MiB/s, window: { days: [mon,tue,wed,thu,fri], from: "08:00", to: "18:00" } }
initialReplication: now
resync: { mode: automatic, window: { from: "18:30", to: "06:00" } }
rpoAlert: 15m
`;

function problems(yaml: string): Array<{ path: string; message: string }> {
  try {
    parsePolicyYaml(yaml);
  } catch (err) {
    if (err instanceof InvalidPolicyError) return err.problems;
    throw err;
  }
  throw new Error("expected the policy to be refused");
}

describe("policy YAML", () => {
  it("parses the full example into seconds, bytes and day numbers", () => {
    expect(parsePolicyYaml(GOLD)).toEqual({
      name: "gold",
      frequency: { kind: "interval", seconds: 30 },
      retention: {
        minPoints: 4,
        tiers: [
          { everySeconds: 0, keepForSeconds: 7200 },
          { everySeconds: 3600, keepForSeconds: 172_800 },
          { everySeconds: 86_400, keepForSeconds: 2_592_000 },
          { everySeconds: 604_800, keepForSeconds: 7_257_600 },
        ],
      },
      applicationConsistent: { everySeconds: 14_400, freezeTimeoutMs: 10_000 },
      compressionLevel: 3,
      bandwidth: [{ bytesPerSecond: 50 * 1024 * 1024, window: { days: [1, 2, 3, 4, 5], from: "08:00", to: "18:00" } }],
      initialReplication: { kind: "now" },
      resync: { mode: "automatic", window: { from: "18:30", to: "06:00" } },
      rpoAlertSeconds: 900,
    });
  });

  it("fills absent fields with today's behaviour: 30 s, the newest 24 points, level 1, unlimited, now, automatic resync", () => {
    expect(parsePolicyYaml("name: bare")).toEqual({
      name: "bare",
      frequency: { kind: "interval", seconds: 30 },
      retention: { tiers: [], minPoints: 24 },
      compressionLevel: 1,
      bandwidth: [],
      initialReplication: { kind: "now" },
      resync: { mode: "automatic" },
      rpoAlertSeconds: 3600,
    });
  });

  it("takes continuous with a floor, a scheduled initial replication, manual resync and compound durations", () => {
    const p = parsePolicyYaml(`name: c\nfrequency: continuous\nminGap: 2s\ninitialReplication: { at: "2026-12-05T02:00:00Z" }\nresync: { mode: manual }\nrpoAlert: 1h30m`);
    expect(p.frequency).toEqual({ kind: "continuous", minGapSeconds: 2 });
    expect(p.initialReplication).toEqual({ kind: "at", at: "2026-12-05T02:00:00.000Z" });
    expect(p.resync).toEqual({ mode: "manual" });
    expect(p.rpoAlertSeconds).toBe(5400);
    expect(parsePolicyYaml("name: c\nfrequency: continuous").frequency).toEqual({ kind: "continuous", minGapSeconds: 1 });
  });

  it("names each invalid field and its fix, several at once", () => {
    const found = problems(`
name: gold
frequency: 500ms
frequncy: 5m
retention:
  tiers:
    - { every: all, keepFor: 2h }
    - { every: 1hr, keepFor: 48h, keep: 3 }
compressionLevel: 25
bandwidth:
  - { limit: fast, window: { days: [mon, funday], from: "8am", to: "18:00" } }
initialReplication: tomorrow
resync: { mode: sometimes }
`);
    const byPath = Object.fromEntries(found.map((p) => [p.path, p.message]));
    expect(byPath["retention.tiers[1].every"]).toBe('"1hr" is not a duration; write e.g. 30s, 5m, 1h, 1d, 1w, or all (every point)');
    expect(byPath["frequency"]).toMatch(/"500ms" is shorter than the 1s minimum/);
    expect(byPath["frequncy"]).toMatch(/^unknown field: did you mean 'frequency'\?; the fields here are name, description, frequency/);
    expect(byPath["compressionLevel"]).toMatch(/25 is not a zstd level; write a whole number from 1/);
    expect(byPath["bandwidth[0].limit"]).toMatch(/"fast" is not a rate; write e\.g\. 50MiB\/s/);
    expect(byPath["bandwidth[0].window.days"]).toMatch(/not a list of days/);
    expect(byPath["bandwidth[0].window.from"]).toMatch(/"8am" is not a time of day; write "HH:MM"/);
    expect(byPath["initialReplication"]).toMatch(/write now, or \{ at:/);
    expect(byPath["resync.mode"]).toMatch(/"sometimes" is not a resync mode; write automatic or manual/);
    expect(byPath["retention.tiers[1].keep"]).toBe("unknown field; the fields here are every, keepFor");
    expect(found.length).toBeGreaterThanOrEqual(10);
  });

  it("refuses a missing name, the reserved name, and rules across fields", () => {
    expect(problems("frequency: 5m")).toEqual([{ path: "name", message: "is missing; every policy has a name, e.g. name: gold" }]);
    expect(problems("name: default")[0]!.message).toMatch(/built-in policy/);
    const cross = problems(`
name: x
frequency: 1h
rpoAlert: 30m
minGap: 5s
retention: { tiers: [ { every: 1d, keepFor: 2d }, { every: 1h, keepFor: 1h } ] }
bandwidth: [ { limit: 10MiB/s }, { limit: 1MiB/s, window: { from: "08:00", to: "18:00" } } ]
`);
    expect(cross.map((p) => p.path).sort()).toEqual(["bandwidth[0].window", "minGap", "retention.tiers[1].every", "retention.tiers[1].keepFor", "rpoAlert"]);
  });

  it("has one canonical form: a reordered, reworded spec is the same policy", () => {
    const a = parsePolicyYaml(GOLD);
    const b = parsePolicyYaml(`
rpoAlert: 900s
compressionLevel: 3
resync: { window: { to: "06:00", from: "18:30" }, mode: automatic }
initialReplication: now
bandwidth:
  - { window: { from: "08:00", to: "18:00", days: [fri, thu, wed, tue, mon] }, limit: 52428800 }
applicationConsistent: { freezeTimeout: 10000ms, every: 240m }
retention:
  tiers:
    - { every: all, keepFor: 120m }
    - { every: 60m, keepFor: 2d }
    - { every: 24h, keepFor: 30d }
    - { every: 7d, keepFor: 12w }
  minPoints: 4
frequency: 30
name: gold
`);
    expect(samePolicy(a, b)).toBe(true);
    expect(policyToYaml(a)).toBe(policyToYaml(b));
    // The printed form parses back to the same policy.
    expect(samePolicy(parsePolicyYaml(policyToYaml(a)), a)).toBe(true);
  });

  it("diffs two versions field by field", () => {
    const a = parsePolicyYaml(GOLD);
    const b = parsePolicyYaml(
      GOLD.replace("frequency: 30s", "frequency: 5m")
        .replace("compressionLevel: 3", "compressionLevel: 9")
        .replace(/bandwidth:\n.*\n/, ""),
    );
    const changes = diffPolicies(a, b);
    expect(changes).toContainEqual({ path: "frequency", from: "30s", to: "5m" });
    expect(changes).toContainEqual({ path: "compressionLevel", from: "3", to: "9" });
    expect(changes).toContainEqual({ path: "bandwidth[0].limit", from: "50MiB/s" });
    expect(changes).toContainEqual({ path: "bandwidth", to: "[]" });
    expect(formatDiff(changes)).toContain("~ frequency: 30s -> 5m");
    expect(diffPolicies(a, a)).toEqual([]);
    expect(formatDiff([])).toBe("(no change)");
  });

  it("the built-in default reproduces the agent's interval and the site's point count", () => {
    expect(defaultPolicy({ maxPoints: 24, intervalSeconds: 10, compressionLevel: 2 })).toMatchObject({
      name: "default",
      frequency: { kind: "interval", seconds: 10 },
      retention: { tiers: [], minPoints: 24 },
      compressionLevel: 2,
    });
  });

  it("the example policy in examples/ is valid", () => {
    const p = parsePolicyYaml(readFileSync(new URL("../../../examples/policy-gold.yaml", import.meta.url), "utf8"));
    expect(samePolicy(p, { ...parsePolicyYaml(GOLD), description: "business-critical VMs" })).toBe(true);
  });
});
