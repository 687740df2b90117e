import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../../common/logger.js";
import { killQemuUnder, killRecordedVms, processCommandLine, terminate } from "../failover/processes.js";
import { launchVm, type LaunchedVm } from "./launchVm.js";
import type { LaunchRequest, SiteVm, VmLauncher, VmRef } from "./port.js";

/**
 * The site's own qemu-system processes (launchVm): a failover VM in its own session so it
 * outlives the site, a test VM killed by the kernel with the site. `qemu.pid` in the run dir
 * lets a restarted site (and test clean-up) end what is left.
 */
export class QemuLauncher implements VmLauncher {
  readonly kind = "qemu" as const;

  constructor(private readonly accel: "auto" | "kvm" | "tcg") {}

  async launch(req: LaunchRequest, logger: Logger): Promise<SiteVm> {
    const vm = await launchVm({
      spec: req.spec,
      diskImages: req.diskImages,
      runDir: req.runDir,
      name: req.name,
      network: req.network,
      logger,
      accel: this.accel,
      ...(req.lifetime === "outlives-site" ? { ownSession: true } : { dieWithOwner: true }),
    });
    writeFileSync(join(req.runDir, "qemu.pid"), String(vm.proc.pid), { mode: 0o600 });
    return new QemuSiteVm(vm);
  }

  async isRunning(ref: VmRef): Promise<boolean> {
    if (ref.launcher !== "qemu") return false;
    // A recycled pid must not be taken for the VM: it must be QEMU with this VM's monitor.
    const cmdline = processCommandLine(ref.pid);
    return cmdline?.includes("qemu-system") === true && cmdline.includes(ref.qmpSocketPath);
  }

  async stopRecorded(ref: VmRef, graceMs: number): Promise<void> {
    if (ref.launcher === "qemu" && (await this.isRunning(ref))) await terminate(ref.pid, graceMs);
  }

  async removeLeftover(dir: string): Promise<void> {
    await killQemuUnder(dir);
  }

  async removeTestLeftovers(testsDir: string): Promise<string[]> {
    killRecordedVms(testsDir);
    return [];
  }
}

class QemuSiteVm implements SiteVm {
  readonly launcher = "qemu" as const;
  readonly ref: VmRef;

  constructor(private readonly vm: LaunchedVm) {
    this.ref = { launcher: "qemu", pid: vm.proc.pid, qmpSocketPath: vm.qmpSocketPath };
  }

  get name() {
    return this.vm.name;
  }
  get accel() {
    return this.vm.accel;
  }
  get serialLogPath() {
    return this.vm.serialLogPath;
  }
  get pid() {
    return this.vm.proc.pid;
  }
  get startedAt() {
    return this.vm.startedAt;
  }
  get runningAt() {
    return this.vm.runningAt;
  }

  async stop(opts: { timeoutMs?: number } = {}): Promise<void> {
    await this.vm.stop(opts);
  }

  async releaseMonitor(): Promise<string> {
    await this.vm.qmp.close();
    return this.vm.qmpSocketPath;
  }
}
