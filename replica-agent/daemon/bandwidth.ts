import { setTimeout as sleep } from "node:timers/promises";

/** Up to this much may go out at once after an idle spell: a second's worth at the current rate. */
const BURST_MS = 1_000;

/**
 * Paces what one agent sends to one replica site so that, over any stretch, it stays within the
 * rate the caller names at each call (the VM's policy's bandwidth window now; 0: unlimited).
 * Shared by every VM replicating to that site, so the limit is per replica site, not per VM.
 */
export class SiteBandwidth {
  private static readonly bySite = new Map<string, SiteBandwidth>();
  private nextFreeAt = 0;

  constructor(private readonly now: () => number = Date.now) {}

  static for(replicaSite: string): SiteBandwidth {
    let b = SiteBandwidth.bySite.get(replicaSite);
    if (!b) SiteBandwidth.bySite.set(replicaSite, (b = new SiteBandwidth()));
    return b;
  }

  /** How long `bytes` must wait before going out at `bytesPerSecond`; books them. */
  reserve(bytes: number, bytesPerSecond: number): number {
    if (bytesPerSecond <= 0) return 0;
    const now = this.now();
    this.nextFreeAt = Math.max(this.nextFreeAt, now - BURST_MS) + (bytes / bytesPerSecond) * 1000;
    return Math.max(0, this.nextFreeAt - now);
  }

  async take(bytes: number, bytesPerSecond: number, signal?: AbortSignal): Promise<void> {
    const wait = this.reserve(bytes, bytesPerSecond);
    if (wait > 0) await sleep(wait, undefined, { signal }).catch(() => undefined);
  }
}
