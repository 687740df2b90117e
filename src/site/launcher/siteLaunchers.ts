import { resolve } from "node:path";
import { LibvirtLauncher } from "./libvirtLauncher.js";
import type { LauncherKind, VmLauncher, VmRef } from "./port.js";
import { QemuLauncher } from "./qemuLauncher.js";

export interface LauncherSettings {
  launcher: LauncherKind;
  /** The libvirt connection of the libvirt launcher (default qemu:///system). */
  libvirtUri?: string;
  accel: "auto" | "kvm" | "tcg";
  siteId: string;
  siteDir: string;
}

export const DEFAULT_LIBVIRT_URI = "qemu:///system";

/**
 * The launcher site.json names, for new VMs; and, for a VM recorded before a restart, the launcher
 * that ran it (site.json may name another one since: a failover VM is adopted or stopped by its own).
 */
export class SiteLaunchers {
  readonly configured: VmLauncher;

  constructor(private readonly s: LauncherSettings) {
    this.configured = s.launcher === "libvirt" ? this.libvirt(s.libvirtUri ?? DEFAULT_LIBVIRT_URI) : new QemuLauncher(s.accel);
  }

  forRef(ref: VmRef): VmLauncher {
    if (ref.launcher === "qemu") return this.configured.kind === "qemu" ? this.configured : new QemuLauncher(this.s.accel);
    const c = this.configured;
    return c instanceof LibvirtLauncher && c.virsh.uri === ref.uri ? c : this.libvirt(ref.uri);
  }

  private libvirt(uri: string): LibvirtLauncher {
    // Absolute: the owner check compares it with what a domain's metadata recorded at launch.
    return new LibvirtLauncher({ uri, siteId: this.s.siteId, siteDir: resolve(this.s.siteDir), accel: this.s.accel });
  }
}
