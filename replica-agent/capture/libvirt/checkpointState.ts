import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";

/** What the agent remembers of a libvirt domain's change tracking (libvirt may forget it). */
export interface LibvirtCaptureState {
  version: 1;
  vmId: string;
  domain: string;
  /** The initial cut-off was confirmed: incremental cycles build on `checkpoint`. */
  enabled: boolean;
  /** Highest cycle sequence ever cut: never reused, even by a cycle that did not land. */
  seq: number;
  /** The checkpoint of the last confirmed cut-off: the next incremental reads what changed since. */
  checkpoint?: string;
  /** Its `virsh checkpoint-dumpxml`, to redefine it after the domain was undefined and defined again. */
  checkpointXml?: string;
  /** An initial cut-off whose ack never came (the site tells whether it landed). */
  unacknowledgedEnableSeq?: number;
  disks: Record<string, { sizeAtCutoff: number; lastCutoffAt: string }>;
}

export class LibvirtStateFile {
  readonly path: string;

  constructor(stateDir: string, vmId: string) {
    this.path = join(stateDir, `${vmId}.libvirt.json`);
  }

  load(vmId: string, domain: string): LibvirtCaptureState {
    try {
      const parsed = JSON.parse(readFileSync(this.path, "utf8")) as LibvirtCaptureState;
      if (parsed.version !== 1 || parsed.vmId !== vmId || typeof parsed.seq !== "number") throw new Error(`${this.path} is not a qreplica libvirt state file for VM ${vmId}`);
      return { ...parsed, domain };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { version: 1, vmId, domain, enabled: false, seq: 0, disks: {} };
      throw err;
    }
  }

  /** Write-then-rename with fsyncs: a crash leaves the old or the new state, never half of one. */
  save(state: LibvirtCaptureState): void {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o700 });
    const tmp = `${this.path}.tmp`;
    writeFileSync(tmp, JSON.stringify(state, null, 2), { mode: 0o600 });
    const fd = openSync(tmp, "r");
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, this.path);
    const dirFd = openSync(dirname(this.path), "r");
    fsyncSync(dirFd);
    closeSync(dirFd);
  }
}
