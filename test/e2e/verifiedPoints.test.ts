/**
 * Verified recovery points (issue 13): a policy's scheduled drill boots the counter guest's newest
 * point in a test failover on the isolated network, waits for its serial pattern, records the
 * time to verified with the point and stops the test VM; a point whose disk was damaged on purpose
 * (its boot sector overwritten in the replica image) fails its drill, naming the serialPattern check.
 * Real processes: two sites, the agent, the counter guest in qemu-system-x86_64 (TCG); the CLI.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readCounters, waitForCounter } from "../../guest/index.js";
import { cliJson, runCli, waitFor } from "../helpers/processes.js";
import { twoSitesPerTest } from "../helpers/twoSites.js";
import { damagePointImage } from "../helpers/damagePoint.js";
import { getSqliteEventStore, relationshipStream, type RecordedEvent } from "../../src/ledger/index.js";

const MiB = 1024 * 1024;
const newTwoSites = twoSitesPerTest();

type Check = { check: string; passed: boolean; atMs: number; detail: string };
type Report = { drillId: string; recoveryPointId: string; result: string; failedCheck: string; message: string; timeToVerifiedMs: number; checks: Check[]; trigger: string };
type WirePoint = { recoveryPointId: string; sequence: number; verification?: Report };

/** QEMU processes whose command line names `dir` (test VMs left behind). */
function qemuProcessesNaming(dir: string): number[] {
  return readdirSync("/proc")
    .filter((n) => /^\d+$/.test(n))
    .filter((pid) => {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
        return cmd.includes("qemu-system") && cmd.includes(dir);
      } catch {
        return false;
      }
    })
    .map(Number);
}

async function relationshipEvents(siteDir: string): Promise<RecordedEvent[]> {
  const store = getSqliteEventStore({ path: join(siteDir, "ledger.sqlite"), create: false });
  try {
    return await store.readStream(relationshipStream("vm1"));
  } finally {
    await store.close();
  }
}

const policy = (timeout: string) => `name: drilled
frequency: 1s
verification:
  every: 1h
  timeout: ${timeout}
  checks: { serialPattern: "^QREPLICA-COUNTER [0-9]+$" }
`;

describe("verified recovery points", { timeout: 300_000 }, () => {
  it("a scheduled drill verifies the newest point by its serial pattern; a point with a damaged disk fails at the serialPattern check", async () => {
    const t = await newTwoSites("qr-drill-", { diskBytes: 8 * MiB, intervalSeconds: 1, counterGuest: true });
    const site = ["--dir", t.siteB];
    const siteB = await t.startSite(t.siteB);
    const file = join(t.dir, "drilled.yaml");
    // Generous for the healthy drill: a loaded machine boots TCG guests slowly.
    writeFileSync(file, policy("90s"));
    await cliJson(["policy", "apply", file, ...site]);
    await waitForCounter(t.guest!.serialLogPath, (v) => v > 5, 90_000);
    t.startAgent({ policy: "drilled" });

    // --- the schedule's first drill: as soon as the VM has a point ---
    const drilled = await waitFor("a scheduled drill recorded", async () => (await t.relationship()).lastDrill, 180_000);
    const events = await relationshipEvents(t.siteB);
    const recorded = events.find((e) => e.type === "VerificationDrillRecorded")!;
    expect(recorded.data).toMatchObject({ trigger: "schedule", result: "verified", pointId: drilled.pointId });
    // The newest point when the drill started: the test failover it ran was on it.
    const started = events.find((e) => e.type === "TestFailoverStarted" && e.data.testId === recorded.data.testId)!;
    expect(started.data.pointId).toBe(drilled.pointId);
    const newestThen = events.filter((e) => e.type === "RecoveryPointCreated" && e.version < started.version).at(-1)!;
    expect(newestThen.data.pointId).toBe(drilled.pointId);
    const checks = recorded.data.checks as Check[];
    expect(checks.map((c) => [c.check, c.passed])).toEqual([
      ["running", true],
      ["serialPattern", true],
    ]);
    expect(checks[1]!.detail).toMatch(/^serial line: QREPLICA-COUNTER \d+$/);
    expect(drilled.timeToVerifiedMs).toBeGreaterThan(0);
    expect(drilled.timeToVerifiedMs).toBe(checks[1]!.atMs);
    // The test VM is stopped and its overlays are gone; the point is not held any longer.
    await waitFor("the drill's test failover stopped", async () => (Object.keys((await t.relationship()).testFailovers).length === 0 ? true : undefined), 60_000);
    expect(existsSync(join(t.siteB, "run", "tests", "vm1", String(recorded.data.testId)))).toBe(false);
    // --- a damaged point: replication paused so that it stays the newest; its boot sector zeroed ---
    await cliJson(["pause", "vm1", ...site]);
    await waitFor(
      "no cycle in flight",
      async () => {
        const s = await t.relationship();
        return s.state === "paused" && s.inFlight === undefined ? s : undefined;
      },
      60_000,
    );
    const points = (await t.relationship()).points;
    const victim = points.at(-1)!;
    const healthy = points.at(-2)!;
    await damagePointImage(victim.disks[0]!.imagePath);
    // A short timeout for the drill that cannot pass (the operator's, instead of the policy's).
    // Named: a cycle already under way when the pause came may still add a newer point.
    const failed = await runCli(["verify", "vm1", "--point", victim.pointId, "--wait", "--timeout", "10s", "--json", ...site]);
    expect(failed.code).toBe(1);
    const fr = JSON.parse(failed.stdout) as { recoveryPointId: string; report: Report };
    expect(fr.recoveryPointId).toBe(victim.pointId);
    expect(fr.report).toMatchObject({ result: "failed", failedCheck: "serialPattern", trigger: "operator", timeToVerifiedMs: 0 });
    expect(fr.report.message).toMatch(/not passed within the drill's timeout; last seen: no serial line matches/);
    expect(fr.report.checks.map((c) => [c.check, c.passed])).toEqual([
      ["running", true],
      ["serialPattern", false],
    ]);
    // The older, undamaged point still verifies (on demand), and the table shows both.
    const ok = await runCli(["verify", "vm1", "--point", healthy.pointId, "--wait", ...site]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(new RegExp(`${healthy.pointId} verified in \\d+\\.\\d s`));
    const listed = await cliJson<WirePoint[]>(["points", "vm1", ...site]);
    expect(listed.find((p) => p.recoveryPointId === victim.pointId)?.verification).toMatchObject({ result: "failed", failedCheck: "serialPattern", trigger: "operator" });
    expect(listed.find((p) => p.recoveryPointId === healthy.pointId)?.verification).toMatchObject({ result: "verified", trigger: "operator" });
    const table = await runCli(["points", "vm1", ...site]);
    expect(table.stdout).toContain("FAILED serialPattern");
    expect(table.stdout).toMatch(/verified in \d+\.\d s/);
    const after = await t.relationship();
    expect(after.lastDrill).toMatchObject({ pointId: healthy.pointId, result: "verified" });
    expect(Object.keys(after.testFailovers)).toEqual([]);
    expect(readdirSync(join(t.siteB, "run", "tests", "vm1"))).toEqual([]);
    // The primary guest was never touched by any of it.
    expect(readCounters(t.guest!.serialLogPath).length).toBeGreaterThan(5);

    // --- the site stops during a drill: the drill is cancelled, recorded, and its VM stopped ---
    const pending = await cliJson<{ drillId: string; recoveryPointId: string }>(["verify", "vm1", "--point", victim.pointId, ...site]);
    expect(pending.recoveryPointId).toBe(victim.pointId);
    expect(Object.keys((await t.relationship()).testFailovers)).toHaveLength(1);
    await siteB.kill("SIGTERM");
    await siteB.exited;
    const stopped = await t.relationship();
    expect(stopped.lastDrill).toMatchObject({ drillId: pending.drillId, result: "failed", failedCheck: "serialPattern" });
    expect(stopped.lastDrill?.message).toMatch(/the drill was cancelled \(the site is stopping\)/);
    expect(Object.keys(stopped.testFailovers)).toEqual([]);
    expect(readdirSync(join(t.siteB, "run", "tests", "vm1"))).toEqual([]);
    expect(qemuProcessesNaming(join(t.siteB, "run", "tests"))).toEqual([]);
  });
});
