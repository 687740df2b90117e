import type { CycleSlot, VmSchedule } from "./cycleScheduler.js";

/**
 * The next cycle's permit ("grid": this VM's next slot; "now": as soon as the in-flight limit
 * allows), or undefined when one of `interruptions` settles first (an operator notice, a planned
 * failover: the caller looks at it) or `wake` aborts (a stop). An interruption that rejects (a
 * broken stream or QEMU) is thrown, as the session must reconnect.
 */
export async function nextSlot(schedule: VmSchedule, wake: AbortSignal, interruptions: Array<Promise<unknown>>, when: "grid" | "now"): Promise<CycleSlot | undefined> {
  const interrupted = new AbortController();
  const interrupt = () => interrupted.abort();
  wake.addEventListener("abort", interrupt, { once: true });
  let failure: unknown;
  void Promise.race(interruptions).then(interrupt, (err: unknown) => {
    failure = err;
    interrupt();
  });
  try {
    const slot = when === "grid" ? await schedule.next(interrupted.signal) : await schedule.now(interrupted.signal);
    if (!slot && failure !== undefined) throw failure;
    return slot;
  } finally {
    wake.removeEventListener("abort", interrupt);
  }
}
