import { scratchFreeBytes } from "../scratchSpace.js";

/** How often a libvirt backup job's scratch filesystem is looked at while a cycle is open. */
export const SCRATCH_GUARD_INTERVAL_MS = 20;

/**
 * libvirt 9.0's pull-mode backup is QEMU's `blockdev-backup sync=none`, whose copy-before-write
 * fails the guest's write when the scratch is full (its `on-cbw-error` is not set, and libvirt
 * offers no way to set it). While a cycle is open the agent watches the scratch filesystem and, once
 * it has less than `lowBytes` free, calls `stop` (which ends the backup job, and with it the
 * copy-before-write) before it fills: the cycle fails, never the guest. A guest that overwrites more
 * than `lowBytes` of not yet copied data between two looks (every SCRATCH_GUARD_INTERVAL_MS, plus
 * the time libvirt takes to end the job) can still outrun it: the scratch then needs more room.
 */
export class ScratchGuard {
  private timer: NodeJS.Timeout | undefined;
  private stopping: Promise<void> | undefined;
  /** Why the job was stopped: set once the scratch ran low. */
  tripped: string | undefined;

  constructor(
    private readonly dir: string,
    private readonly lowBytes: number,
    private readonly stop: (reason: string) => Promise<void>,
    private readonly intervalMs = SCRATCH_GUARD_INTERVAL_MS,
  ) {}

  start(): void {
    this.timer = setInterval(() => this.look(), this.intervalMs);
    this.timer.unref();
  }

  /** No more looks; resolves once a stop it started has ended. */
  async end(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.stopping;
  }

  private look(): void {
    if (this.tripped !== undefined) return;
    let free: number;
    try {
      free = scratchFreeBytes(this.dir);
    } catch {
      return; // unmounted or removed under us: the job's own reads will say so
    }
    if (free >= this.lowBytes) return;
    this.tripped = `the scratch filesystem of ${this.dir} fell to ${free} bytes free (under ${this.lowBytes}) while the guest overwrote blocks the cycle had not read yet, so the backup job was ended before a full scratch could fail the guest's writes`;
    clearInterval(this.timer);
    this.stopping = this.stop(this.tripped).catch(() => undefined);
  }
}
