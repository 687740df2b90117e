import type { Logger } from "../../common/logger.js";
import type { VmSpec } from "../../model/vmSpec.js";
import type { LaunchNetwork } from "./network.js";

/** Who runs the VMs a site launches: its own qemu-system processes, or libvirt domains. */
export type LauncherKind = "qemu" | "libvirt";
export const LAUNCHER_KINDS: readonly LauncherKind[] = ["qemu", "libvirt"];

/**
 * What a restarted site needs to find a VM again (kept in the failover's `vm.json`): the QEMU
 * process and its monitor, or the libvirt domain.
 */
export type VmRef = { launcher: "qemu"; pid: number; qmpSocketPath: string } | { launcher: "libvirt"; uri: string; domain: string };

/**
 * `outlives-site`: production (a failover VM), which a site restart adopts. `dies-with-site`: a
 * test VM, which never survives the site (the qemu launcher ties it to the site process; libvirt
 * cannot, so a restarted site destroys what is left of it).
 */
export type VmLifetime = "outlives-site" | "dies-with-site";

export interface LaunchRequest {
  spec: VmSpec;
  /** One qcow2 image (an overlay on a recovery point) per `spec.disks[].diskId`. */
  diskImages: Record<string, string>;
  /** Holds the VM's serial log (and the qemu launcher's monitor socket). */
  runDir: string;
  /** The VM's name at this site (the libvirt launcher prefixes it with the site's prefix). */
  name: string;
  network: LaunchNetwork;
  lifetime: VmLifetime;
}

/** A VM the site launched and holds, whichever launcher runs it. */
export interface SiteVm {
  readonly name: string;
  readonly launcher: LauncherKind;
  readonly accel: "kvm" | "tcg";
  /** COM1, logged to a file the site can read. */
  readonly serialLogPath: string;
  /** QEMU's pid, 0 when the launcher does not tell it (a remote libvirt). */
  readonly pid: number;
  readonly ref: VmRef;
  readonly startedAt: Date;
  /** When the launcher first saw the VM running (the RTO clock's end). */
  readonly runningAt: Date;
  /** ACPI powerdown, then a hard stop after `timeoutMs`; the libvirt launcher also undefines the domain. */
  stop(opts?: { timeoutMs?: number }): Promise<void>;
  /**
   * Drops the site's own monitor connection so a reverse-replication agent can take it (QEMU serves
   * one client per monitor) and returns the monitor socket. The libvirt launcher refuses it.
   */
  releaseMonitor(): Promise<string>;
}

export interface VmLauncher {
  readonly kind: LauncherKind;
  launch(req: LaunchRequest, logger: Logger): Promise<SiteVm>;
  /** Whether the VM a record names still runs, and is that VM (not a recycled pid or another site's domain). */
  isRunning(ref: VmRef): Promise<boolean>;
  /** Stops a recorded VM this process does not hold (one adopted after a restart). */
  stopRecorded(ref: VmRef, graceMs: number): Promise<void>;
  /** Ends what a launch named `name` with its files in `dir` left behind (the site died mid-launch, or the VM died). */
  removeLeftover(dir: string, name: string): Promise<void>;
  /** Ends every test VM an earlier run of this site left (test VMs never outlive the site); returns their names. */
  removeTestLeftovers(testsDir: string): Promise<string[]>;
}
