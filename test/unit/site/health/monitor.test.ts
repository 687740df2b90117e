/** The site's health monitor over a ledger, with an injected clock: HealthChanged only on a change of level. */
import { describe, expect, it } from "vitest";
import { silentLogger } from "../../../../src/common/logger.js";
import { executeCommand, getInMemoryEventStore, failCycle } from "../../../../src/ledger/index.js";
import { AgentActivity } from "../../../../src/site/health/activity.js";
import { HEALTH_CHANGED, HealthMonitor, inferFrequencySeconds } from "../../../../src/site/health/monitor.js";
import { SiteMetrics } from "../../../../src/site/health/siteMetrics.js";
import { cutoff, enabled, incremental, initialCommitted, initialStarted } from "../../ledgerDomain/fixtures.js";

const VM = "web1";

describe("HealthMonitor", () => {
  it("evaluates with the clock, records each change of level once, and exposes gauges", async () => {
    let now = Date.parse(cutoff(6)) + 5_000;
    const clock = () => now;
    const store = getInMemoryEventStore({ clock: () => new Date(now) });
    for (const d of [enabled, initialStarted, initialCommitted, incremental(2), incremental(3), incremental(4), incremental(5), incremental(6)]) await executeCommand(store, VM, d);
    const activity = new AgentActivity(clock);
    let connected = true;
    const metrics = new SiteMetrics();
    const monitor = new HealthMonitor(store, activity, () => connected, { evaluateEverySeconds: 3600 }, silentLogger, metrics, clock);
    activity.touch(VM);
    await monitor.start();
    await monitor.stop(); // no timer: ticks are driven by the test

    const changes = async () =>
      (await store.readAll({ streamPrefix: "health-" }))
        .filter((e) => e.type === HEALTH_CHANGED)
        .map((e) => e.data as { from: string | null; to: string; reasons: Array<{ code: string }> });
    // The frequency is inferred from the cut-offs (30 s apart): RPO alert 120 s, silent after 120 s.
    expect((await monitor.evaluate(VM))!.thresholds).toMatchObject({ frequencySeconds: 30, rpoAlertSeconds: 120 });
    expect(await changes()).toEqual([expect.objectContaining({ from: null, to: "normal" })]);

    await monitor.tick();
    expect(await changes()).toHaveLength(1);

    // The agent dies: 70 s later the point is late (Warning), 130 s later silent and past the RPO (Critical).
    connected = false;
    now += 65_000;
    await monitor.tick();
    await monitor.tick();
    now += 65_000;
    await monitor.tick();
    const seen = await changes();
    expect(seen.map((c) => c.to)).toEqual(["normal", "warning", "critical"]);
    expect(seen[1]!.reasons.map((r) => r.code)).toContain("POINT_LATE");
    expect(seen[2]!.reasons.map((r) => r.code)).toEqual(expect.arrayContaining(["AGENT_SILENT", "RPO_EXCEEDED"]));

    const text = await metrics.registry.metrics();
    expect(text).toContain(`qreplica_vm_health{vm="${VM}",state="critical"} 1`);
    expect(text).toContain(`qreplica_vm_health{vm="${VM}",state="normal"} 0`);
    expect(text).toContain(`qreplica_site_cycles_total{vm="${VM}",outcome="committed"} 6`);

    // A failed cycle on a fresh point: the reasons change but a new monitor restarts from the recorded level.
    const again = new HealthMonitor(store, activity, () => connected, { evaluateEverySeconds: 3600 }, silentLogger, undefined, clock);
    await again.start();
    await again.stop();
    expect(await changes()).toHaveLength(3);
    await executeCommand(store, VM, (s) => failCycle(s, { cycleSeq: 7, generation: 1, reason: "STORAGE_FAILURE", message: "disk full" }));
    expect((await again.measure(VM, 3600))!.replicationFailureCount).toBe(1);
  });

  it("infers the frequency from the median gap of incremental cut-offs, not from a few", () => {
    const c = (s: number[]) => s.map((x, i) => ({ kind: i === 0 ? "full" : "incremental", cutoffAt: x * 1000 }));
    expect(inferFrequencySeconds(c([0, 30, 60]))).toBeUndefined();
    expect(inferFrequencySeconds(c([0, 30, 60, 90, 180, 210]))).toBe(30);
    expect(inferFrequencySeconds(c([0, 32.5, 65, 97.5]))).toBe(32.5);
    // A 1 s interval's jitter is not read as misses: at least 10 s.
    expect(inferFrequencySeconds(c([0, 1.2, 2.5, 3.6, 4.9]))).toBe(10);
  });
});
