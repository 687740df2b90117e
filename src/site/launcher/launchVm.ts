import { existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { silentLogger, type Logger } from "../../common/logger.js";
import { imageInfo } from "../../qemu/processes/qemuImg.js";
import { spawnQemu, type ProcessExit, type QemuProcess } from "../../qemu/processes/qemuProcess.js";
import { kvmUsable, systemVmArgs, type SystemVmDisk } from "../../qemu/processes/systemVm.js";
import { QmpClient } from "../../qemu/qmp/index.js";
import { VmLaunchError } from "./errors.js";
import { nicArgs, type LaunchNetwork } from "./network.js";
import { validateVmSpec, type VmSpec } from "../../model/vmSpec.js";

export interface LaunchVmOptions {
  /** Validated here again (it usually comes from the ledger as JSON). */
  spec: VmSpec;
  /** One qcow2 image (normally an overlay on a recovery point) per `spec.disks[].diskId`. */
  diskImages: Record<string, string>;
  /** Holds `<name>.qmp` (the monitor socket) and `<name>.serial.log` (COM1); created if missing. */
  runDir: string;
  /** The VM's name: file names in runDir and QEMU's `-name guest=`. */
  name: string;
  network: LaunchNetwork;
  logger?: Logger;
  /** `auto` (default): KVM when /dev/kvm is usable by this process, TCG otherwise. */
  accel?: "auto" | "kvm" | "tcg";
  /** How long QEMU may take to open its monitor and report `running` (default 30 s). */
  startTimeoutMs?: number;
  /** Its own process group, out of reach of signals to the launcher's (a failover VM is production). */
  ownSession?: boolean;
  /** Killed by the kernel when the launching process dies, kill -9 included (a test VM). */
  dieWithOwner?: boolean;
  /**
   * Adds a qemu-guest-agent channel (virtio-serial port `org.qemu.guest_agent.0`) whose host side
   * is the unix socket `<runDir>/<name>.qga` (a verification drill's guestAgent and guestCommand
   * checks). Not for VMs whose spec brings its own agent channel in extraArgs.
   */
  guestAgentChannel?: boolean;
}

export interface StopResult {
  /** What ended QEMU: the guest powering off after ACPI powerdown, QMP `quit`, or SIGKILL. */
  method: "powerdown" | "quit" | "kill" | "already-exited";
  exit: ProcessExit;
}

export interface LaunchedVm {
  readonly name: string;
  readonly accel: "kvm" | "tcg";
  readonly qmp: QmpClient;
  readonly proc: QemuProcess;
  readonly serialLogPath: string;
  readonly qmpSocketPath: string;
  /** With `guestAgentChannel`: the host side of the guest agent's channel. */
  readonly guestAgentSocketPath?: string;
  /** When QEMU was spawned. */
  readonly startedAt: Date;
  /** When `query-status` first said `running` (the vCPUs run from here: the RTO clock's end). */
  readonly runningAt: Date;
  /**
   * ACPI `system_powerdown`, waiting `timeoutMs` (default 30 s) for the guest to power off; then
   * QMP `quit` (QEMU flushes and closes the images), waiting `quitTimeoutMs` (default 10 s);
   * then SIGKILL. Idempotent: concurrent or repeated calls share one stop.
   */
  stop(opts?: { timeoutMs?: number; quitTimeoutMs?: number }): Promise<StopResult>;
  /** SIGKILL now (a crash: unflushed guest writes are lost). */
  kill(): Promise<ProcessExit>;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const MAX_SOCKET_PATH = 107;

/**
 * Launches a VM from its replicated spec on the given disk images: QEMU starts paused (-S) with a
 * QMP monitor, COM1 logged to a file and `-nodefaults -display none`; the launcher checks the
 * accelerator, issues `cont` and waits until `query-status` reports `running`. Disks are attached
 * as qcow2 nodes named after their diskId (device `<diskId>-dev`), NICs as `<model>` devices with
 * id `<nicId>` on netdev `net-<nicId>`. On any failure the QEMU process is killed before throwing.
 */
export async function launchVm(opts: LaunchVmOptions): Promise<LaunchedVm> {
  const { name } = opts;
  const logger = (opts.logger ?? silentLogger).child({ vm: name });
  if (!NAME.test(name)) throw new VmLaunchError(name, "the name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit");
  const spec = validateVmSpec(opts.spec);

  const missing = spec.disks.filter((d) => !Object.hasOwn(opts.diskImages, d.diskId)).map((d) => d.diskId);
  if (missing.length > 0)
    throw new VmLaunchError(name, `no image given for disk ${missing.join(", ")}; pass diskImages { ${missing.map((m) => `"${m}": "<overlay.qcow2>"`).join(", ")} }`);
  const extra = Object.keys(opts.diskImages).filter((id) => !spec.disks.some((d) => d.diskId === id));
  if (extra.length > 0) throw new VmLaunchError(name, `diskImages has ${extra.join(", ")}, which the spec's disks (${spec.disks.map((d) => d.diskId).join(", ")}) do not list`);
  const seen = new Map<string, string>();
  for (const d of spec.disks) {
    const path = resolve(opts.diskImages[d.diskId]!);
    if (seen.has(path)) throw new VmLaunchError(name, `disks ${seen.get(path)} and ${d.diskId} both use ${path}; each disk needs its own image`);
    seen.set(path, d.diskId);
    if (!existsSync(path)) throw new VmLaunchError(name, `the image of disk ${d.diskId} (${path}) does not exist`);
    const info = await imageInfo(path).catch((err: unknown) => {
      throw new VmLaunchError(name, `cannot inspect the image of disk ${d.diskId} (${path}): ${(err as Error).message}`, { cause: err });
    });
    if (info.format !== "qcow2") throw new VmLaunchError(name, `the image of disk ${d.diskId} (${path}) is ${info.format}; launch from a qcow2 overlay (createThrowawayOverlay)`);
  }

  mkdirSync(opts.runDir, { recursive: true });
  const qmpSocketPath = join(resolve(opts.runDir), `${name}.qmp`);
  const serialLogPath = join(resolve(opts.runDir), `${name}.serial.log`);
  if (Buffer.byteLength(qmpSocketPath) > MAX_SOCKET_PATH) {
    throw new VmLaunchError(name, `the monitor socket path ${qmpSocketPath} is longer than ${MAX_SOCKET_PATH} bytes (the unix socket limit); use a shorter runDir or name`);
  }

  const qgaSocketPath = opts.guestAgentChannel ? join(resolve(opts.runDir), `${name}.qga`) : undefined;
  const qgaArgs = qgaSocketPath
    ? [
        "-device",
        "virtio-serial-pci,id=qr-qga-serial",
        "-chardev",
        `socket,id=qr-qga,path=${qgaSocketPath},server=on,wait=off`,
        "-device",
        "virtserialport,bus=qr-qga-serial.0,chardev=qr-qga,name=org.qemu.guest_agent.0",
      ]
    : [];
  const accel = opts.accel === undefined || opts.accel === "auto" ? (kvmUsable() ? "kvm" : "tcg") : opts.accel;
  const disks: SystemVmDisk[] = spec.disks.map((d) => ({
    nodeName: d.diskId,
    path: resolve(opts.diskImages[d.diskId]!),
    format: "qcow2",
    bus: d.bus,
    ...(d.bootIndex === undefined ? {} : { bootIndex: d.bootIndex }),
  }));
  const args = systemVmArgs({
    qmpSocketPath,
    serialLogPath,
    disks,
    machine: spec.machine,
    cpus: spec.cpus,
    memoryMiB: spec.memoryMiB,
    accel,
    paused: true,
    extraArgs: ["-name", `guest=${name}`, ...(spec.cpu ? ["-cpu", spec.cpu] : []), ...nicArgs(name, spec.nics, opts.network), ...qgaArgs, ...(spec.extraArgs ?? [])],
  });
  const startTimeoutMs = opts.startTimeoutMs ?? 30_000;
  logger.debug({ args }, "launching VM");

  const startedAt = new Date();
  let proc: QemuProcess;
  try {
    proc = await spawnQemu("qemu-system-x86_64", args, [qmpSocketPath], startTimeoutMs, { ownSession: opts.ownSession === true, dieWithParent: opts.dieWithOwner === true });
  } catch (err) {
    throw new VmLaunchError(name, (err as Error).message, { cause: err });
  }
  let qmp: QmpClient | undefined;
  try {
    qmp = await QmpClient.connect({ socketPath: qmpSocketPath, logger, connectTimeoutMs: startTimeoutMs });
    const kvm = await qmp.execute<{ enabled: boolean; present: boolean }>("query-kvm");
    if (kvm.enabled !== (accel === "kvm")) throw new Error(`QEMU reports KVM ${kvm.enabled ? "enabled" : "disabled"} but ${accel} was requested`);
    await qmp.execute("cont");
    const deadline = Date.now() + startTimeoutMs;
    for (;;) {
      const st = await qmp.execute<{ status: string; running: boolean }>("query-status");
      if (st.running) break;
      if (Date.now() > deadline) throw new Error(`still '${st.status}' ${startTimeoutMs} ms after cont`);
      await sleep(10);
    }
  } catch (err) {
    await proc.kill();
    await qmp?.close();
    const stderr = proc.stderr.trim();
    throw new VmLaunchError(name, `${(err as Error).message}${stderr ? `; QEMU said: ${stderr}` : ""}`, { cause: err });
  }
  const vm = new RunningVm(name, accel, qmp, proc, serialLogPath, qmpSocketPath, startedAt, new Date(), logger, qgaSocketPath);
  logger.info({ accel, pid: proc.pid, startMs: vm.runningAt.getTime() - startedAt.getTime() }, "VM running");
  return vm;
}

class RunningVm implements LaunchedVm {
  private stopping: Promise<StopResult> | undefined;

  constructor(
    readonly name: string,
    readonly accel: "kvm" | "tcg",
    readonly qmp: QmpClient,
    readonly proc: QemuProcess,
    readonly serialLogPath: string,
    readonly qmpSocketPath: string,
    readonly startedAt: Date,
    readonly runningAt: Date,
    private readonly logger: Logger,
    readonly guestAgentSocketPath?: string,
  ) {}

  stop(opts: { timeoutMs?: number; quitTimeoutMs?: number } = {}): Promise<StopResult> {
    this.stopping ??= this.doStop(opts.timeoutMs ?? 30_000, opts.quitTimeoutMs ?? 10_000);
    return this.stopping;
  }

  async kill(): Promise<ProcessExit> {
    const exit = await this.proc.kill("SIGKILL");
    await this.qmp.close();
    return exit;
  }

  private async doStop(timeoutMs: number, quitTimeoutMs: number): Promise<StopResult> {
    try {
      if (!this.proc.running) return { method: "already-exited", exit: await this.proc.exited };
      await this.qmp.execute("system_powerdown", undefined, { timeoutMs: 5_000 }).catch(() => undefined);
      let exit = await this.exitWithin(timeoutMs);
      if (exit) return this.done("powerdown", exit);
      this.logger.info({ timeoutMs }, "the guest did not power off after ACPI powerdown; quitting QEMU");
      // QEMU may answer and close the socket, or close it first: either way it is quitting.
      await this.qmp.execute("quit", undefined, { timeoutMs: quitTimeoutMs }).catch(() => undefined);
      exit = await this.exitWithin(quitTimeoutMs);
      if (exit) return this.done("quit", exit);
      this.logger.warn({ quitTimeoutMs }, "QEMU did not exit after quit; killing it");
      return this.done("kill", await this.proc.kill("SIGKILL"));
    } finally {
      await this.qmp.close();
    }
  }

  private done(method: StopResult["method"], exit: ProcessExit): StopResult {
    this.logger.info({ method, exit }, "VM stopped");
    return { method, exit };
  }

  private async exitWithin(ms: number): Promise<ProcessExit | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), ms)));
    try {
      return await Promise.race([this.proc.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}
