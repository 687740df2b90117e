/**
 * A drill's result in the ledger (VerificationDrillRecorded): recorded only while its test holds
 * the point, folded into the point catalogue and the relationship's last (verified) drill; and
 * health's POINT_NOT_VERIFIED with an injected clock.
 */
import { describe, expect, it } from "vitest";
import {
  executeCommand,
  getInMemoryEventStore,
  InvalidCommandInputError,
  RecoveryPointsProjection,
  RecoveryPointUnavailableError,
  recordVerificationDrill,
  StatusProjection,
  type RecordVerificationDrillInput,
} from "../../../../src/ledger/index.js";
import { defaultThresholds, evaluateHealth, type HealthInput } from "../../../../src/site/health/rules.js";
import { SitePolicies } from "../../../../src/site/sitePolicies.js";
import { SiteMetrics } from "../../../../src/site/health/siteMetrics.js";
import { parsePrometheusText, sampleValue } from "../../../helpers/promText.js";
import { parsePolicyYaml } from "../../../../src/policy/schema.js";
import { createLogger } from "../../../../src/common/logger.js";
import { enabled, fold, incremental, initialCommitted, initialStarted, run, testStarted } from "../../ledgerDomain/fixtures.js";

const VM = "web1";
const drill = (over: Partial<RecordVerificationDrillInput> = {}): RecordVerificationDrillInput => ({
  drillId: "d1",
  testId: "t1",
  pointId: "rp-2",
  trigger: "schedule",
  result: "verified",
  timeToVerifiedMs: 4_200,
  checks: [
    { check: "running", passed: true, atMs: 900 },
    { check: "serialPattern", passed: true, atMs: 4_200, detail: "serial line: QREPLICA-COUNTER 7" },
  ],
  startedAt: "2026-12-05T10:00:00.000Z",
  finishedAt: "2026-12-05T10:00:05.000Z",
  ...over,
});

describe("recordVerificationDrill", () => {
  const s = fold(VM, enabled, initialStarted, initialCommitted, incremental(2), testStarted("t1", "rp-2"));

  it("records the result with the point's cycle and cut-off; the fold keeps the last drill and the last verified one", () => {
    const [e] = recordVerificationDrill(s, drill());
    expect(e).toMatchObject({ type: "VerificationDrillRecorded", data: { pointId: "rp-2", cycleSeq: 2, testId: "t1", result: "verified", timeToVerifiedMs: 4_200 } });
    const verified = run(s, (x) => recordVerificationDrill(x, drill()));
    const failed = run(verified, (x) =>
      recordVerificationDrill(
        x,
        drill({ drillId: "d2", result: "failed", failedCheck: "serialPattern", message: "timeout", timeToVerifiedMs: undefined, finishedAt: "2026-12-05T11:00:00.000Z" }),
      ),
    );
    expect(failed.lastDrill).toMatchObject({ drillId: "d2", result: "failed", failedCheck: "serialPattern" });
    expect(failed.lastVerified).toMatchObject({ drillId: "d1", pointId: "rp-2", timeToVerifiedMs: 4_200 });
  });

  it("refuses a result without its running test, for a point that is gone, or inconsistent", () => {
    expect(() => recordVerificationDrill(s, drill({ testId: "t9" }))).toThrow(InvalidCommandInputError);
    expect(() => recordVerificationDrill(s, drill({ pointId: "rp-1" }))).toThrow(/no running test failover t1 on rp-1/);
    expect(() => recordVerificationDrill(s, drill({ pointId: "rp-9" }))).toThrow(RecoveryPointUnavailableError);
    expect(() => recordVerificationDrill(s, drill({ result: "failed" }))).toThrow(/names the check that failed/);
    expect(() => recordVerificationDrill(s, drill({ failedCheck: "running" }))).toThrow(/no failed check/);
    // A VM that could not be launched: no test, the point must exist.
    expect(
      recordVerificationDrill(s, drill({ testId: undefined, result: "failed", failedCheck: "running", checks: [{ check: "running", passed: false, atMs: 3 }] }))[0]!.data,
    ).not.toHaveProperty("testId");
  });

  it("the point catalogue and the status show it", async () => {
    const store = getInMemoryEventStore();
    for (const d of [enabled, initialStarted, initialCommitted, incremental(2), testStarted("t1", "rp-2")]) await executeCommand(store, VM, d);
    await executeCommand(store, VM, (x) => recordVerificationDrill(x, drill({ result: "failed", failedCheck: "serialPattern", message: "no line", timeToVerifiedMs: undefined })));
    const points = await RecoveryPointsProjection.rebuild(store, VM);
    expect(points.get("rp-2")?.verification).toEqual({
      drillId: "d1",
      result: "failed",
      failedCheck: "serialPattern",
      message: "no line",
      finishedAt: "2026-12-05T10:00:05.000Z",
      trigger: "schedule",
    });
    expect(points.get("rp-1")?.verification).toBeUndefined();
    const status = (await StatusProjection.rebuild(store)).get(VM, new Date());
    expect(status?.lastDrill?.result).toBe("failed");
    expect(status?.lastVerified).toBeUndefined();
  });
});

describe("health: POINT_NOT_VERIFIED", () => {
  const T0 = Date.parse("2026-12-05T00:00:00.000Z");
  const t = defaultThresholds({ frequencySeconds: 30, rpoAlertSeconds: 300 });
  const now = T0 + 30 * 3600_000;
  const base: HealthInput = {
    state: "replicating",
    consecutiveFailures: 0,
    lastErrorMessage: undefined,
    resyncReason: undefined,
    pauseReason: undefined,
    cycleSkipped: undefined,
    commits: [],
    failures: [],
    newestCutoffAt: now - 10_000,
    agentConnected: true,
    lastActivityAt: now - 1_000,
    watchingSince: T0,
  };
  const codes = (input: HealthInput) => evaluateHealth(input, t, now).reasons.map((r) => r.code);
  const evaluate = (input: HealthInput) => evaluateHealth(input, t, now);

  it("warns when no drill verified a point within the window, naming the last verified point and the failing check", () => {
    const window = 24 * 3600;
    expect(
      evaluate({ ...base, verification: { windowSeconds: window, requiredSince: T0, lastVerified: { pointId: "rp-5", result: "verified", finishedAt: now - 3600_000 } } }).level,
    ).toBe("normal");
    const r = evaluate({
      ...base,
      verification: {
        windowSeconds: window,
        requiredSince: T0,
        lastVerified: { pointId: "rp-5", result: "verified", finishedAt: now - 25 * 3600_000 },
        lastDrill: { pointId: "rp-90", result: "failed", failedCheck: "serialPattern", message: "no serial line matches", finishedAt: now - 600_000 },
      },
    });
    expect(r.level).toBe("warning");
    expect(r.reasons[0]).toMatchObject({ code: "POINT_NOT_VERIFIED", level: "warning" });
    expect(r.reasons[0]!.message).toMatch(
      /within the policy's window of 86400 s: the last verified point is rp-5 .*the last drill \(rp-90, .*\) failed its serialPattern check: no serial line matches/,
    );
  });

  it("a VM never verified is measured from when its policy asked for drills; no policy schedule, no warning", () => {
    expect(codes({ ...base, verification: { windowSeconds: 3600, requiredSince: now - 1800_000 } })).toEqual([]);
    expect(evaluate({ ...base, verification: { windowSeconds: 3600, requiredSince: now - 7200_000 } }).reasons[0]!.message).toMatch(/no point was ever verified/);
    expect(codes(base)).toEqual([]);
    // Nothing to verify before the first point.
    expect(codes({ ...base, newestCutoffAt: undefined, verification: { windowSeconds: 3600, requiredSince: T0 } })).toEqual([]);
  });
});

describe("health's drill window from the policy's history", () => {
  it("is required since the first of the latest versions with verification, or the VM's binding if later", async () => {
    const store = getInMemoryEventStore();
    const policies = await SitePolicies.open(store, { defaultMaxPoints: 12 }, createLogger("test"));
    const ada = { actor: "ada-admin", actorRole: "admin" };
    const at = (iso: string) => ({ now: new Date(iso) });
    await policies.book.apply(parsePolicyYaml("name: gold\n"), ada, at("2026-12-01T00:00:00Z"));
    await policies.book.bind("vm1", "gold", ada, "site", new Date("2026-12-01T01:00:00Z"));
    expect(policies.healthThresholds("vm1")?.verification).toBeUndefined();
    const drills = "verification: { every: 1h, checks: { serialPattern: login } }\n";
    await policies.book.apply(parsePolicyYaml(`name: gold\n${drills}`), ada, at("2026-12-02T00:00:00Z"));
    // A later change of something else does not restart the window.
    await policies.book.apply(parsePolicyYaml(`name: gold\ncompressionLevel: 5\n${drills}`), ada, at("2026-12-03T00:00:00Z"));
    expect(policies.healthThresholds("vm1")?.verification).toEqual({ windowSeconds: 7200, requiredSince: Date.parse("2026-12-02T00:00:00Z") });
    // A VM bound later is measured from its binding.
    await policies.book.bind("vm2", "gold", ada, "site", new Date("2026-12-04T00:00:00Z"));
    expect(policies.healthThresholds("vm2")?.verification?.requiredSince).toBe(Date.parse("2026-12-04T00:00:00Z"));
  });
});

describe("drill metrics", () => {
  it("the last verified time, its time to verified and whether the last drill failed, per VM; absent before the first drill", async () => {
    const m = new SiteMetrics();
    const vm = (drills?: Parameters<SiteMetrics["setVm"]>[1]["drills"]) =>
      m.setVm("vm-1", {
        result: { level: "normal", reasons: [], counts: { succeeded: 1, failed: 0, missed: 0 } },
        state: "replicating",
        allStates: ["replicating"],
        ageSeconds: 1,
        frequencySeconds: 30,
        rpoAlertSeconds: 3600,
        connected: true,
        points: 3,
        ...(drills ? { drills } : {}),
      });
    vm();
    let f = parsePrometheusText(await m.registry.metrics());
    expect(sampleValue(f, "qreplica_vm_last_drill_failed", "qreplica_vm_last_drill_failed", { vm: "vm-1" })).toBeUndefined();
    vm({ lastVerifiedAt: 1_796_450_000_000, timeToVerifiedMs: 4_200, lastFailed: true });
    f = parsePrometheusText(await m.registry.metrics());
    expect(sampleValue(f, "qreplica_vm_last_verified_timestamp_seconds", "qreplica_vm_last_verified_timestamp_seconds", { vm: "vm-1" })).toBe(1_796_450_000);
    expect(sampleValue(f, "qreplica_vm_time_to_verified_seconds", "qreplica_vm_time_to_verified_seconds", { vm: "vm-1" })).toBe(4.2);
    expect(sampleValue(f, "qreplica_vm_last_drill_failed", "qreplica_vm_last_drill_failed", { vm: "vm-1" })).toBe(1);
  });
});
