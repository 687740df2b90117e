import { statfsSync } from "node:fs";
import { ScratchSpaceLowError } from "./errors.js";

/** Below this a cut-off is not taken: the snapshot would break at the guest's first overwrites. */
export const DEFAULT_SCRATCH_MIN_FREE_BYTES = 8 * 1024 * 1024;

/** Bytes an unprivileged writer may still use on the filesystem holding `dir`. */
export function scratchFreeBytes(dir: string): number {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
}

/**
 * Checked before each cut-off. Worst case the scratch holds every byte of the cycle that the guest
 * overwrites before it is read; refusing every cycle whose worst case does not fit would stall a
 * VM with a large change set forever, while most cycles need far less. So only a scratch that is
 * nearly full is refused (nothing is cut); a tighter one is tried and, if the guest overwrites more
 * than fits, the snapshot breaks instead of the guest's writes (SnapshotBrokenError).
 */
export function checkScratchSpace(vmId: string, dir: string, minFreeBytes: number): { freeBytes: number } {
  const freeBytes = scratchFreeBytes(dir);
  if (freeBytes < minFreeBytes) throw new ScratchSpaceLowError(vmId, dir, freeBytes, minFreeBytes);
  return { freeBytes };
}
