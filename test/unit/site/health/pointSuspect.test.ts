/** The POINT_SUSPECT health rule and the policy's lockFor (parsed, canonical, versioned). */
import { describe, expect, it } from "vitest";
import { defaultThresholds, evaluateHealth, type CycleRecord, type HealthInput } from "../../../../src/site/health/rules.js";
import { parsePolicyYaml } from "../../../../src/policy/schema.js";
import { policyToYaml, samePolicy } from "../../../../src/policy/canonical.js";
import { InvalidPolicyError } from "../../../../src/policy/errors.js";

const T0 = Date.parse("2026-12-04T10:00:00.000Z");
const t = defaultThresholds({ frequencySeconds: 30, rpoAlertSeconds: 300, windowSeconds: 3600 });
const commits: CycleRecord[] = Array.from({ length: 5 }, (_, i) => ({
  seq: i + 1,
  kind: i === 0 ? "full" : "incremental",
  cutoffAt: T0 + i * 30_000,
  committedAt: T0 + i * 30_000 + 2_000,
  dataBytes: 1_000_000,
  wireBytes: 500_000,
  durationMs: 2_000,
}));
const base: HealthInput = {
  state: "replicating",
  consecutiveFailures: 0,
  lastErrorMessage: undefined,
  resyncReason: undefined,
  pauseReason: undefined,
  cycleSkipped: undefined,
  commits,
  failures: [],
  newestCutoffAt: commits.at(-1)!.cutoffAt,
  agentConnected: true,
  lastActivityAt: commits.at(-1)!.committedAt,
  watchingSince: T0,
};
const now = commits.at(-1)!.committedAt + 1_000;

describe("health: suspect points", () => {
  it("a suspect point is a Warning naming it, its disks' shares and baselines, and the last clean point", () => {
    expect(evaluateHealth(base, t, now).level).toBe("normal");
    const r = evaluateHealth(
      {
        ...base,
        suspectPoints: [
          { pointId: "rp-4", disks: [{ diskId: "vda", share: 0.991, baselineShare: 0.031 }] },
          { pointId: "rp-5", disks: [] },
        ],
        lastCleanPointId: "rp-3",
      },
      t,
      now,
    );
    expect(r.level).toBe("warning");
    expect(r.reasons).toEqual([
      {
        code: "POINT_SUSPECT",
        level: "warning",
        message: expect.stringMatching(/^recovery point rp-4 and 1 later point\(s\) may hold encrypted data: .* on vda 99% \(baseline 3%\); the last clean point is rp-3 /),
      },
    ]);
  });

  it("says so when no clean point is retained", () => {
    const r = evaluateHealth({ ...base, suspectPoints: [{ pointId: "rp-1", disks: [{ diskId: "vda", share: 1, baselineShare: 0 }] }], lastCleanPointId: undefined }, t, now);
    expect(r.reasons[0]!.message).toContain("the last clean point is none retained");
  });
});

describe("policy retention.lockFor", () => {
  it("is parsed into lockSeconds, written back canonically, and a change of it is a change of policy", () => {
    const p = parsePolicyYaml("name: vault\nretention: { minPoints: 2, lockFor: 7d }\n");
    expect(p.retention).toEqual({ tiers: [], minPoints: 2, lockSeconds: 7 * 86_400 });
    expect(policyToYaml(p)).toMatch(/lockFor: 1w/);
    expect(samePolicy(parsePolicyYaml(policyToYaml(p)), p)).toBe(true);
    expect(samePolicy(parsePolicyYaml("name: vault\nretention: { minPoints: 2, lockFor: 168h }\n"), p)).toBe(true);
    expect(samePolicy(parsePolicyYaml("name: vault\nretention: { minPoints: 2 }\n"), p)).toBe(false);
    expect(parsePolicyYaml("name: vault\n").retention.lockSeconds).toBeUndefined();
  });

  it("refuses a lock that is not a duration, naming the field", () => {
    expect(() => parsePolicyYaml("name: vault\nretention: { lockFor: forever }\n")).toThrow(InvalidPolicyError);
    expect(() => parsePolicyYaml("name: vault\nretention: { lockFor: forever }\n")).toThrow(/retention\.lockFor/);
    expect(() => parsePolicyYaml("name: vault\nretention: { lockFr: 1d }\n")).toThrow(/lockFor/);
  });
});
