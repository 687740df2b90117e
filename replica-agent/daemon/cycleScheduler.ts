import type { FrequencySpec } from "../../src/policy/types.js";

/**
 * When each VM's cycles start, for every VM of one agent process.
 *
 * - Interval policies run on a fixed grid (`phase + k * interval`), not "interval after the last
 *   cycle ended", so the cut-offs keep their cadence whatever a cycle lasts. Each VM's phase is a
 *   stable hash of its id: a fleet's cycles spread over the interval instead of firing at once,
 *   and a restart keeps them where they were.
 * - One VM never overlaps itself: its next start waits for the end of its last cycle.
 * - A slot that passes entirely without a start (the last cycle overran it, or no permit was
 *   free) is counted as missed and dropped, never queued: the late cycle serves the slot nearest
 *   to its start.
 * - At most `maxInFlight` cycles run at once in the process, so a fleet cannot saturate the host;
 *   waiting VMs get permits in order of their due time.
 * - Continuous policies start the next cycle `minGapSeconds` after the last one ended.
 */
export interface SchedulerClock {
  now(): number;
  /** Resolves after `ms`, or early (without rejecting) when `signal` aborts. */
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

export const systemClock: SchedulerClock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve) => {
      if (signal.aborted) return resolve();
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      signal.addEventListener("abort", done, { once: true });
    }),
};

/** A started cycle: `release()` when it has ended (committed, failed or skipped). */
export interface CycleSlot {
  /** The grid slot this start serves (continuous: when it became due). */
  dueAt: number;
  startedAt: number;
  /** Slots that passed with no start since the previous cycle (0 when on time or less than half an interval late). */
  missed: number;
  release(): void;
}

export interface ScheduleStats {
  started: number;
  missed: number;
  /** Sum of start offsets from the slot served (ms; negative when a late start serves the next slot a little early). */
  lateMs: number;
}

/**
 * Where in each interval the VM's slots sit, as a fraction of one: FNV-1a of its id, then
 * MurmurHash3's finalizer, without which ids that differ in their last characters (vm-1, vm-2...)
 * land close together.
 */
export function phaseFraction(vmId: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < vmId.length; i++) {
    h ^= vmId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 0x1_0000_0000;
}

interface Waiter {
  dueAt: number;
  grant: () => void;
}

export class CycleScheduler {
  private running = 0;
  private readonly queue: Waiter[] = [];

  constructor(
    readonly maxInFlight: number,
    readonly clock: SchedulerClock = systemClock,
  ) {
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1) throw new RangeError(`maxInFlight must be a whole number of at least 1 (got ${maxInFlight})`);
  }

  /** `phaseKey`: whose phase the slots take (a consistency group's id, so its members' slots coincide); the VM's id by default. */
  schedule(vmId: string, frequency: FrequencySpec, phaseKey = vmId): VmSchedule {
    return new VmSchedule(this, vmId, frequency, phaseKey);
  }

  get inFlight(): number {
    return this.running;
  }

  /** @internal Resolves when a permit is this waiter's; earliest due first. */
  acquire(dueAt: number, signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) return Promise.resolve(false);
    if (this.running < this.maxInFlight && this.queue.length === 0) {
      this.running++;
      return Promise.resolve(true);
    }
    return new Promise<boolean>((resolve) => {
      const waiter: Waiter = {
        dueAt,
        grant: () => {
          signal.removeEventListener("abort", onAbort);
          resolve(true);
        },
      };
      const onAbort = () => {
        const i = this.queue.indexOf(waiter);
        if (i >= 0) this.queue.splice(i, 1);
        resolve(false);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      const at = this.queue.findIndex((w) => w.dueAt > dueAt);
      this.queue.splice(at < 0 ? this.queue.length : at, 0, waiter);
    });
  }

  /** @internal */
  release(): void {
    const next = this.queue.shift();
    if (next) next.grant();
    else this.running--;
  }
}

export class VmSchedule {
  readonly stats: ScheduleStats = { started: 0, missed: 0, lateMs: 0 };
  private lastStart: number | undefined;
  private lastEnd: number | undefined;
  private busy = false;
  private changed = new AbortController();
  private pendingFirstDue: number | undefined;

  constructor(
    private readonly scheduler: CycleScheduler,
    readonly vmId: string,
    private frequencySpec: FrequencySpec,
    private readonly phaseKey: string = vmId,
  ) {
    checkFrequency(frequencySpec);
  }

  get frequency(): FrequencySpec {
    return this.frequencySpec;
  }

  /** Cycles running now over every VM of the scheduler. */
  get inFlight(): number {
    return this.scheduler.inFlight;
  }

  /** A new frequency (policy change): the wait for the next cycle is recomputed at once. */
  setFrequency(frequency: FrequencySpec): void {
    checkFrequency(frequency);
    this.frequencySpec = frequency;
    // A grid change is not a miss: slots are counted on the new grid from now on.
    if (frequency.kind === "interval") this.lastStart = undefined;
    this.pendingFirstDue = undefined;
    this.changed.abort();
    this.changed = new AbortController();
  }

  /** When the next cycle is due, given what has run so far. */
  nextDueAt(): number {
    const f = this.frequencySpec;
    if (f.kind === "continuous") return this.lastEnd === undefined ? this.firstDue() : this.lastEnd + f.minGapSeconds * 1000;
    if (this.lastStart === undefined) return this.firstDue();
    // The first slot after the last start's slot.
    return slotAtOrAfter(this.lastStart + 1, f.seconds * 1000, this.phaseKey);
  }

  /** The first due time (at start, or after a change), fixed once computed: a late wake-up must not move it. */
  private firstDue(): number {
    if (this.pendingFirstDue === undefined) {
      const f = this.frequencySpec;
      const now = this.scheduler.clock.now();
      this.pendingFirstDue = f.kind === "interval" ? slotAtOrAfter(now, f.seconds * 1000, this.phaseKey) : now;
    }
    return this.pendingFirstDue;
  }

  /**
   * Waits for this VM's next slot and a free permit; undefined when `signal` aborted first (the
   * caller has something else to do: a notice, a stop). The caller runs one cycle, then
   * `release()`s the slot.
   */
  async next(signal: AbortSignal): Promise<CycleSlot | undefined> {
    if (this.busy) throw new Error(`VM ${this.vmId}: next() called while its previous cycle has not been released`);
    const clock = this.scheduler.clock;
    for (;;) {
      if (signal.aborted) return undefined;
      const dueAt = this.nextDueAt();
      const wait = dueAt - clock.now();
      // Woken early by a stop or by a frequency change (then the due time is recomputed).
      const either = eitherSignal(signal, this.changed.signal);
      try {
        if (wait > 0) {
          await clock.sleep(wait, either.signal);
          continue;
        }
        if (await this.scheduler.acquire(dueAt, either.signal)) return this.start(dueAt);
      } finally {
        either.dispose();
      }
    }
  }

  /**
   * A permit now, off the grid: an initial replication or a resync starts as soon as the host's
   * in-flight limit allows, and the grid's next slot is not moved by it.
   */
  async now(signal: AbortSignal): Promise<CycleSlot | undefined> {
    if (this.busy) throw new Error(`VM ${this.vmId}: now() called while its previous cycle has not been released`);
    const dueAt = this.scheduler.clock.now();
    if (!(await this.scheduler.acquire(dueAt, signal))) return undefined;
    this.busy = true;
    return { dueAt, startedAt: this.scheduler.clock.now(), missed: 0, release: this.releaser() };
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.busy = false;
      this.lastEnd = this.scheduler.clock.now();
      this.scheduler.release();
    };
  }

  private start(dueAt: number): CycleSlot {
    const startedAt = this.scheduler.clock.now();
    const f = this.frequencySpec;
    let missed = 0;
    let served = dueAt;
    if (f.kind === "interval") {
      // A late start serves the slot nearest to it (the site counts a slot served by a cut-off
      // within half an interval of it), so a start just before the next slot does not leave a
      // second cycle due a moment later.
      const interval = f.seconds * 1000;
      missed = Math.max(0, Math.round((startedAt - dueAt) / interval));
      served = dueAt + missed * interval;
    }
    this.lastStart = served;
    this.pendingFirstDue = undefined;
    this.busy = true;
    this.stats.started++;
    this.stats.missed += missed;
    this.stats.lateMs += startedAt - served;
    return { dueAt: served, startedAt, missed, release: this.releaser() };
  }
}

/**
 * Aborts when either aborts. Not AbortSignal.any: its listeners on a long-lived source signal are
 * only dropped by garbage collection, and an agent waits for a slot every cycle for months.
 */
function eitherSignal(a: AbortSignal, b: AbortSignal): { signal: AbortSignal; dispose(): void } {
  const both = new AbortController();
  const abort = () => both.abort();
  if (a.aborted || b.aborted) both.abort();
  a.addEventListener("abort", abort, { once: true });
  b.addEventListener("abort", abort, { once: true });
  return {
    signal: both.signal,
    dispose: () => {
      a.removeEventListener("abort", abort);
      b.removeEventListener("abort", abort);
    },
  };
}

/** The first slot of `vmId`'s grid at or after `t`. */
function slotAtOrAfter(t: number, interval: number, vmId: string): number {
  const phase = phaseFraction(vmId) * interval;
  return phase + Math.ceil((t - phase) / interval) * interval;
}

function checkFrequency(f: FrequencySpec): void {
  if (f.kind === "interval" && !(f.seconds >= 1)) throw new RangeError(`a replication interval must be at least 1 s (got ${f.seconds})`);
  if (f.kind === "continuous" && !(f.minGapSeconds >= 0)) throw new RangeError(`a continuous policy's minimum gap must be 0 s or more (got ${f.minGapSeconds})`);
}
