import { writeJsonDurably } from "../../src/common/durableFile.js";
import { readFileSync } from "node:fs";
import { join } from "node:path";

export interface DiskCaptureState {
  node: string;
  /** Tracking was enabled and an initial cut-off taken; cycles build on the recording bitmap. */
  enabled: boolean;
  /** Sequence of the recording bitmap (`qreplica-<seq>`) as last known. */
  seq: number;
  sizeAtCutoff?: number;
  lastCutoffAt?: string;
}

export interface VmCaptureState {
  version: 1;
  vmId: string;
  disks: Record<string, DiskCaptureState>;
  /**
   * Set while the agent holds the guest's vCPUs stopped for a cut-off: if the agent dies inside
   * that window, its next start finds the mark and resumes the guest it paused.
   */
  cutoffPauseStartedAt?: string;
}

/**
 * The agent's own memory of what it set up in QEMU. QEMU's bitmaps alone cannot tell "never
 * enabled" from "lost in a crash", and only the second one means resync.
 */
export class CaptureStateFile {
  readonly path: string;

  constructor(stateDir: string, vmId: string) {
    this.path = join(stateDir, `${vmId}.capture.json`);
  }

  load(vmId: string): VmCaptureState {
    try {
      const parsed = JSON.parse(readFileSync(this.path, "utf8")) as VmCaptureState;
      if (parsed.version !== 1 || parsed.vmId !== vmId || typeof parsed.disks !== "object") {
        throw new Error(`${this.path} is not a qreplica capture state file for VM ${vmId}`);
      }
      return parsed;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { version: 1, vmId, disks: {} };
      throw err;
    }
  }

  /** Write-then-rename with fsyncs: a crash leaves the old or the new state, never half of one. */
  save(state: VmCaptureState): void {
    writeJsonDurably(this.path, state);
  }
}
