import { getEventListeners } from "node:events";
import { describe, expect, it } from "vitest";
import { CycleScheduler, phaseFraction, type CycleSlot, type SchedulerClock, type VmSchedule } from "../../../replica-agent/daemon/cycleScheduler.js";

/** Virtual time: sleeps resolve only when the test advances the clock past them. */
class FakeClock implements SchedulerClock {
  private t = 0;
  private timers: Array<{ at: number; resolve: () => void }> = [];

  now(): number {
    return this.t;
  }

  sleep(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const onAbort = () => {
        this.timers = this.timers.filter((x) => x !== timer);
        resolve();
      };
      const timer = {
        at: this.t + ms,
        resolve: () => {
          signal.removeEventListener("abort", onAbort);
          resolve();
        },
      };
      this.timers.push(timer);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Moves time forward in steps, letting every woken task run before the next step. */
  async advance(ms: number, stepMs = 100): Promise<void> {
    const end = this.t + ms;
    while (this.t < end) {
      this.t = Math.min(end, this.t + stepMs);
      const due = this.timers.filter((x) => x.at <= this.t);
      this.timers = this.timers.filter((x) => x.at > this.t);
      for (const d of due) d.resolve();
      await flush();
    }
  }
}

const flush = async () => {
  for (let i = 0; i < 20; i++) await Promise.resolve();
  await new Promise((r) => setImmediate(r));
};

/** Runs one VM's cycles of `durationMs` each (or per-cycle durations) until stopped, recording starts. */
function runVm(clock: FakeClock, schedule: VmSchedule, duration: (n: number) => number) {
  const starts: CycleSlot[] = [];
  const stop = new AbortController();
  let overlap = false;
  let active = 0;
  const done = (async () => {
    for (let n = 0; ; n++) {
      const slot = await schedule.next(stop.signal);
      if (!slot) return;
      if (++active > 1) overlap = true;
      starts.push(slot);
      const until = clock.now() + duration(n);
      while (clock.now() < until && !stop.signal.aborted) await clock.sleep(until - clock.now(), stop.signal);
      active--;
      slot.release();
    }
  })();
  return {
    starts,
    stop: async () => {
      stop.abort();
      await done;
    },
    overlapped: () => overlap,
  };
}

describe("cycle scheduler", () => {
  it("keeps an interval VM on its grid, offset by its phase, whatever the cycles last", async () => {
    const clock = new FakeClock();
    const s = new CycleScheduler(4, clock);
    const vm = s.schedule("vm-a", { kind: "interval", seconds: 30 });
    const phase = phaseFraction("vm-a") * 30_000;
    const r = runVm(clock, vm, (n) => (n % 2 ? 12_000 : 3_000));
    await clock.advance(301_000);
    await r.stop();
    expect(r.starts.length).toBeGreaterThanOrEqual(10);
    for (const [i, st] of r.starts.entries()) {
      expect(st.missed).toBe(0);
      // Started at its slot (to the clock's 100 ms step), slots 30 s apart.
      expect(Math.abs(st.startedAt - st.dueAt)).toBeLessThanOrEqual(100);
      expect((((st.dueAt - phase) % 30_000) + 30_000) % 30_000).toBeCloseTo(0, 6);
      if (i > 0) expect(st.dueAt - r.starts[i - 1]!.dueAt).toBe(30_000);
    }
    expect(vm.stats).toMatchObject({ started: r.starts.length, missed: 0 });
  });

  it("counts slots a long cycle overran as missed, never queues them, and never overlaps", async () => {
    const clock = new FakeClock();
    const s = new CycleScheduler(4, clock);
    const vm = s.schedule("vm-slow", { kind: "interval", seconds: 10 });
    // The third cycle lasts 35 s: three slots pass under it.
    const r = runVm(clock, vm, (n) => (n === 2 ? 35_000 : 1_000));
    await clock.advance(120_000);
    await r.stop();
    expect(r.overlapped()).toBe(false);
    const after = r.starts[3]!;
    // The cycle from slot s ran until s + 35 s: slots s+10, s+20 and s+30 passed under it and are
    // missed; the late start, halfway between s+30 and s+40, serves s+40 (the later at a tie).
    expect(after.missed).toBe(3);
    expect(after.dueAt - r.starts[2]!.dueAt).toBe(40_000);
    expect(Math.abs(after.startedAt - after.dueAt)).toBeLessThanOrEqual(5_000);
    expect(r.starts[4]!.dueAt - after.dueAt).toBe(10_000);
    expect(r.starts[4]!.startedAt - after.startedAt).toBeGreaterThanOrEqual(5_000);
    expect(vm.stats.missed).toBe(3);
  });

  it("runs at most maxInFlight cycles at once across VMs, earliest due first, and counts the misses it causes", async () => {
    const clock = new FakeClock();
    const s = new CycleScheduler(2, clock);
    let peak = 0;
    const vms = Array.from({ length: 6 }, (_, i) => s.schedule(`vm-${i}`, { kind: "interval", seconds: 10 }));
    const runs = vms.map((vm) =>
      runVm(clock, vm, () => {
        peak = Math.max(peak, s.inFlight);
        return 8_000;
      }),
    );
    await clock.advance(200_000);
    // All at once: a VM stopped alone would hand its permit to one still running.
    await Promise.all(runs.map((r) => r.stop()));
    expect(peak).toBe(2);
    // 6 VMs x 8 s of work every 10 s on 2 permits cannot all run: misses are counted, not queued.
    const missed = vms.reduce((n, v) => n + v.stats.missed, 0);
    const started = vms.reduce((n, v) => n + v.stats.started, 0);
    expect(missed).toBeGreaterThan(0);
    // 2 permits over 200 s of 8 s cycles: at most 2 x 26 starts.
    expect(started).toBeLessThanOrEqual(52);
    expect(started).toBeGreaterThanOrEqual(40);
    for (const r of runs) expect(r.overlapped()).toBe(false);
  });

  it("spreads a fleet's slots over the interval instead of firing them at once", () => {
    const phases = Array.from({ length: 200 }, (_, i) => phaseFraction(`vm-${i}`));
    // In each tenth of the interval: 20 expected; a hash that clustered would leave some empty.
    const buckets = new Array(10).fill(0) as number[];
    for (const p of phases) buckets[Math.floor(p * 10)]!++;
    for (const b of buckets) expect(b).toBeGreaterThanOrEqual(8);
    expect(phaseFraction("vm-1")).toBe(phaseFraction("vm-1"));
  });

  it("takes a new frequency on the next cycle, waking a VM that waits for a far slot", async () => {
    const clock = new FakeClock();
    const s = new CycleScheduler(4, clock);
    const vm = s.schedule("vm-policy", { kind: "interval", seconds: 3600 });
    const r = runVm(clock, vm, () => 500);
    await clock.advance(3_700_000, 10_000);
    const before = r.starts.length;
    expect(before).toBeGreaterThanOrEqual(1);
    vm.setFrequency({ kind: "interval", seconds: 2 });
    await clock.advance(20_000);
    await r.stop();
    // Every 2 s from the change on: about 10 more cycles in 20 s, none counted missed by the change.
    expect(r.starts.length - before).toBeGreaterThanOrEqual(9);
    expect(vm.stats.missed).toBe(0);
  });

  it("continuous mode starts the next cycle a minimum gap after the last one ended", async () => {
    const clock = new FakeClock();
    const s = new CycleScheduler(4, clock);
    const vm = s.schedule("vm-cdp", { kind: "continuous", minGapSeconds: 1 });
    const r = runVm(clock, vm, (n) => 2_000 + (n % 3) * 1_000);
    await clock.advance(60_000);
    await r.stop();
    for (let i = 1; i < r.starts.length; i++) {
      const prevEnd = r.starts[i - 1]!.startedAt + 2_000 + ((i - 1) % 3) * 1_000;
      expect(r.starts[i]!.startedAt - prevEnd).toBeGreaterThanOrEqual(1_000);
      expect(r.starts[i]!.startedAt - prevEnd).toBeLessThanOrEqual(1_100);
    }
    expect(vm.stats.missed).toBe(0);
  });

  it("refuses nonsense settings with the value named", () => {
    expect(() => new CycleScheduler(0)).toThrow(/maxInFlight .* at least 1 \(got 0\)/);
    const s = new CycleScheduler(1);
    expect(() => s.schedule("x", { kind: "interval", seconds: 0.5 })).toThrow(/at least 1 s \(got 0.5\)/);
  });

  it("a stop while waiting for a slot or a permit returns at once and leaks no permit", async () => {
    const clock = new FakeClock();
    const s = new CycleScheduler(1, clock);
    const a = s.schedule("a", { kind: "continuous", minGapSeconds: 0 });
    const b = s.schedule("b", { kind: "continuous", minGapSeconds: 0 });
    const held = await a.next(new AbortController().signal);
    expect(held).toBeDefined();
    const stop = new AbortController();
    const waiting = b.next(stop.signal);
    stop.abort();
    expect(await waiting).toBeUndefined();
    held!.release();
    expect(s.inFlight).toBe(0);
    const again = await b.next(new AbortController().signal);
    expect(again).toBeDefined();
    expect(s.inFlight).toBe(1);
  });

  it("leaves no listener behind on the caller's signal, cycle after cycle", async () => {
    const clock = new FakeClock();
    const s = new CycleScheduler(1, clock);
    const vm = s.schedule("vm-long-lived", { kind: "interval", seconds: 1 });
    const stop = new AbortController();
    for (let i = 0; i < 200; i++) {
      const next = vm.next(stop.signal);
      await clock.advance(1_000);
      const slot = await next;
      expect(slot).toBeDefined();
      slot!.release();
    }
    expect(getEventListeners(stop.signal, "abort").length).toBe(0);
  });
});

describe("consistency groups share their slots' phase", () => {
  it("members scheduled with their group's id as the phase key are due at the same instants; their own ids would spread them", () => {
    const s = new CycleScheduler(4, new FakeClock());
    const interval = { kind: "interval" as const, seconds: 60 };
    const [a, b] = [s.schedule("db1", interval, "app1"), s.schedule("web1", interval, "app1")];
    expect(a.nextDueAt()).toBe(b.nextDueAt());
    expect(s.schedule("db1", interval).nextDueAt()).not.toBe(s.schedule("web1", interval).nextDueAt());
  });
});
