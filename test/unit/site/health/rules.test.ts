/** Health rules with an injected clock: each rule, and the transitions a silent agent and failures drive. */
import { describe, expect, it } from "vitest";
import { countCycles, defaultThresholds, evaluateHealth, type CycleRecord, type HealthInput } from "../../../../src/site/health/rules.js";

const T0 = Date.parse("2026-12-04T10:00:00.000Z");
const F = 30; // s
const t = defaultThresholds({ frequencySeconds: F, rpoAlertSeconds: 300, windowSeconds: 3600 });

/** Cycles cut every `gap` s from T0, each committed 2 s later, `n` of them. */
function steady(n: number, gap = F, durationMs = 2_000, dataBytes = 1_000_000): CycleRecord[] {
  return Array.from({ length: n }, (_, i) => ({
    seq: i + 1,
    kind: i === 0 ? "full" : "incremental",
    cutoffAt: T0 + i * gap * 1000,
    committedAt: T0 + i * gap * 1000 + durationMs,
    dataBytes,
    wireBytes: dataBytes / 2,
    durationMs,
  }));
}

function input(commits: CycleRecord[], over: Partial<HealthInput> = {}): HealthInput {
  return {
    state: "replicating",
    consecutiveFailures: 0,
    lastErrorMessage: undefined,
    resyncReason: undefined,
    pauseReason: undefined,
    cycleSkipped: undefined,
    commits,
    failures: [],
    newestCutoffAt: commits.at(-1)?.cutoffAt,
    agentConnected: true,
    lastActivityAt: commits.at(-1)?.committedAt,
    watchingSince: T0,
    ...over,
  };
}

const codes = (r: ReturnType<typeof evaluateHealth>) => r.reasons.map((x) => x.code);
const lastCut = (c: CycleRecord[]) => c.at(-1)!.cutoffAt;

describe("health rules", () => {
  it("steady cycles at the frequency: Normal, every cycle counted as a success, none missed", () => {
    const c = steady(121); // 1 h of 30 s cycles
    const r = evaluateHealth(input(c), t, lastCut(c) + 10_000);
    expect(r.level).toBe("normal");
    expect(r.reasons).toEqual([]);
    expect(r.counts.missed).toBe(0);
    expect(r.counts.succeeded).toBeGreaterThanOrEqual(119);
  });

  it("newest point older than twice the frequency: Warning POINT_LATE; older than the RPO: Critical RPO_EXCEEDED", () => {
    const c = steady(10);
    expect(codes(evaluateHealth(input(c), t, lastCut(c) + 59_000))).toEqual([]);
    const late = evaluateHealth(input(c), t, lastCut(c) + 61_000);
    expect(late.level).toBe("warning");
    expect(codes(late)).toContain("POINT_LATE");
    const over = evaluateHealth(input(c), t, lastCut(c) + 301_000);
    expect(over.level).toBe("critical");
    expect(codes(over)[0]).toBe("RPO_EXCEEDED");
    expect(codes(over)).not.toContain("POINT_LATE");
  });

  it("Hyper-V's floor: no point for over an hour is a Warning even with a longer RPO threshold", () => {
    const slow = defaultThresholds({ frequencySeconds: 900, rpoAlertSeconds: 4 * 3600 });
    const c = steady(3, 900);
    const r = evaluateHealth(input(c), slow, lastCut(c) + 3601_000);
    expect(r.level).toBe("warning");
    expect(codes(r)).toContain("NO_POINT_FOR_AN_HOUR");
  });

  it("missed cycles: more than 20% of the window's due cycles missed is a Warning; 20% or less is not", () => {
    // Every 4th slot skipped: 25% missed (gap of 2 F every 3 cycles -> 1 miss per 4 slots).
    const c: CycleRecord[] = [];
    let at = T0;
    for (let i = 0; i < 90; i++) {
      c.push({ seq: i + 1, kind: "incremental", cutoffAt: at, committedAt: at + 1000, dataBytes: 1, wireBytes: 1, durationMs: 1000 });
      at += (i % 3 === 2 ? 2 : 1) * F * 1000;
    }
    const now = lastCut(c) + 5_000;
    const r = evaluateHealth(input(c), t, now);
    expect(r.counts.missed / (r.counts.missed + r.counts.succeeded)).toBeGreaterThan(0.2);
    expect(r.level).toBe("warning");
    expect(codes(r)).toEqual(["CYCLES_MISSED"]);
    // Every 6th slot skipped: about 17%, within Hyper-V's tolerance.
    const d: CycleRecord[] = [];
    at = T0;
    for (let i = 0; i < 100; i++) {
      d.push({ seq: i + 1, kind: "incremental", cutoffAt: at, committedAt: at + 1000, dataBytes: 1, wireBytes: 1, durationMs: 1000 });
      at += (i % 5 === 4 ? 2 : 1) * F * 1000;
    }
    expect(evaluateHealth(input(d), t, lastCut(d) + 5_000).level).toBe("normal");
  });

  it("a failed attempt fills its slot: counted as failed, not missed", () => {
    const c = steady(5);
    // Slot after cycle 5 failed at +30 s; cycle 6 cut at +60 s.
    const failedAt = lastCut(c) + 31_000;
    const next = { ...c.at(-1)!, seq: 6, cutoffAt: lastCut(c) + 60_000, committedAt: lastCut(c) + 62_000 };
    const counts = countCycles({ commits: [...c, next], failures: [failedAt], state: "replicating" }, t, next.committedAt + 1000);
    expect(counts).toMatchObject({ failed: 1, missed: 0, succeeded: 6 });
    const none = countCycles({ commits: [...c, next], failures: [], state: "replicating" }, t, next.committedAt + 1000);
    expect(none.missed).toBe(1);
  });

  it("failed cycles: one is a Warning (the agent retries); three in a row are Critical REPLICATION_FAILED", () => {
    const c = steady(5);
    const now = lastCut(c) + 5_000;
    const one = evaluateHealth(input(c, { consecutiveFailures: 1, lastErrorMessage: "cycle 6: storage failure" }), t, now);
    expect(one.level).toBe("warning");
    expect(one.reasons[0]).toMatchObject({ code: "CYCLE_FAILED", level: "warning" });
    expect(one.reasons[0]!.message).toContain("storage failure");
    const three = evaluateHealth(input(c, { consecutiveFailures: 3, lastErrorMessage: "x" }), t, now);
    expect(three.level).toBe("critical");
    expect(codes(three)).toEqual(["REPLICATION_FAILED"]);
  });

  it("resync required is Critical whatever the lag", () => {
    const c = steady(5);
    const r = evaluateHealth(input(c, { state: "resync-required", resyncReason: "tracking lost" }), t, lastCut(c) + 1000);
    expect(r.level).toBe("critical");
    expect(r.reasons[0]).toMatchObject({ code: "RESYNC_REQUIRED" });
    expect(r.reasons[0]!.message).toContain("tracking lost");
  });

  it("a silent agent (not connected, no message for longer than the threshold) is Critical AGENT_SILENT; connected, it is not", () => {
    const c = steady(5);
    const quick = defaultThresholds({ frequencySeconds: F, rpoAlertSeconds: 3600, silentAfterSeconds: 90 });
    const lastSeen = lastCut(c) + 2_000;
    const gone = input(c, { agentConnected: false, lastActivityAt: lastSeen });
    expect(codes(evaluateHealth(gone, quick, lastSeen + 89_000))).not.toContain("AGENT_SILENT");
    const r = evaluateHealth(gone, quick, lastSeen + 91_000);
    expect(r.level).toBe("critical");
    expect(codes(r)[0]).toBe("AGENT_SILENT");
    expect(codes(evaluateHealth({ ...gone, agentConnected: true }, quick, lastSeen + 91_000))).not.toContain("AGENT_SILENT");
    // Never heard since the site started: silence is measured from then.
    const never = input(c, { agentConnected: false, lastActivityAt: undefined, watchingSince: lastSeen });
    expect(codes(evaluateHealth(never, quick, lastSeen + 91_000))).toContain("AGENT_SILENT");
  });

  it("the primary reporting skipped cycles is a Warning CYCLES_SKIPPED", () => {
    const c = steady(5);
    const r = evaluateHealth(input(c, { cycleSkipped: { code: "SCRATCH_SPACE_LOW", message: "1 MiB free", since: new Date(T0).toISOString() } }), t, lastCut(c) + 1000);
    expect(r.level).toBe("warning");
    expect(r.reasons[0]!.message).toContain("SCRATCH_SPACE_LOW");
    // Before the initial replication too (an iothread disk, say): the cause comes first.
    const waiting = evaluateHealth(
      input([], {
        state: "ready-for-initial-replication",
        cycleSkipped: { code: "IOTHREAD_UNSUPPORTED", message: "vda runs its I/O in iothread /objects/io0", since: new Date(T0).toISOString() },
      }),
      t,
      T0 + 1000,
    );
    expect(waiting.level).toBe("warning");
    expect(codes(waiting)).toEqual(["CYCLES_SKIPPED", "STATE_INITIAL_REPLICATION"]);
    expect(waiting.reasons[0]!.message).toContain("IOTHREAD_UNSUPPORTED");
  });

  it("a due application-consistent point taken crash-consistent is a Warning APP_CONSISTENT_FAILED with the reason", () => {
    const c = steady(5);
    const quiesceFailure = { cycleSeq: 4, at: new Date(T0).toISOString(), reason: "no answer to guest-sync-delimited within 3000 ms" };
    const r = evaluateHealth(input(c, { quiesceFailure }), t, lastCut(c) + 1000);
    expect(r.level).toBe("warning");
    expect(codes(r)).toEqual(["APP_CONSISTENT_FAILED"]);
    expect(r.reasons[0]!.message).toContain("guest-sync-delimited");
    expect(r.reasons[0]!.message).toContain("qemu-guest-agent");
  });

  it("RPO at risk: changes arrive faster than the link delivers them (cycles busy over 80% of the time)", () => {
    const busy = steady(10, F, 27_000); // 27 s of every 30 s
    const r = evaluateHealth(input(busy), t, lastCut(busy) + 28_000);
    expect(codes(r)).toEqual(["RPO_AT_RISK"]);
    expect(r.reasons[0]!.message).toMatch(/busy 90%/);
    const relaxed = steady(10, F, 10_000);
    expect(evaluateHealth(input(relaxed), t, lastCut(relaxed) + 11_000).level).toBe("normal");
  });

  it("paused and initial replication are Warnings; a failed-over VM has no lag rules", () => {
    const c = steady(5);
    const now = lastCut(c) + 3600_000;
    const paused = evaluateHealth(input(c, { state: "paused", pauseReason: "maintenance" }), t, now);
    expect(codes(paused)).toEqual(["STATE_PAUSED"]);
    expect(codes(evaluateHealth(input([], { state: "initial-replication-in-progress" }), t, T0))).toEqual(["STATE_INITIAL_REPLICATION"]);
    expect(evaluateHealth(input(c, { state: "failed-over", agentConnected: false }), t, now).level).toBe("normal");
  });

  it("transitions as time passes after the agent dies: Normal -> Warning (late) -> Critical (silent, RPO) -> Normal after it returns", () => {
    const quick = defaultThresholds({ frequencySeconds: 10 });
    expect(quick.rpoAlertSeconds).toBe(60); // 4x frequency, at least 60 s
    expect(quick.silentAfterSeconds).toBe(60);
    const c = steady(20, 10);
    const died = lastCut(c) + 3_000;
    const dead = input(c, { agentConnected: false, lastActivityAt: died });
    const levels = [5_000, 25_000, 65_000].map((dt) => evaluateHealth(dead, quick, lastCut(c) + dt).level);
    expect(levels).toEqual(["normal", "warning", "critical"]);
    const crit = evaluateHealth(dead, quick, lastCut(c) + 65_000);
    expect(codes(crit)).toEqual(expect.arrayContaining(["AGENT_SILENT", "RPO_EXCEEDED"]));
    // Back: a Hello, then a cycle cut soon after.
    const back = lastCut(c) + 70_000;
    const next: CycleRecord = { seq: 21, kind: "incremental", cutoffAt: back, committedAt: back + 1000, dataBytes: 1, wireBytes: 1, durationMs: 1000 };
    const r = evaluateHealth(input([...c, next], { lastActivityAt: back + 1000 }), quick, back + 2000);
    // The missed slots while it was away are still in the window: at most a Warning for them.
    expect(r.level).not.toBe("critical");
    expect(codes(r).every((x) => x === "CYCLES_MISSED")).toBe(true);
  });
});
