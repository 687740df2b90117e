import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { QmpClient } from "../../src/qemu/qmp/index.js";
import { systemVmArgs, type SystemVmOptions } from "../../src/qemu/processes/index.js";
import { waitFor } from "./processes.js";

/**
 * A qemu-system-x86_64 VM whose stdout the test reads: HMP `qemu-io` prints its results there, not
 * on the monitor. Writes issued with `qemu-io -d <device>` go through the device's own
 * BlockBackend, the path the guest's writes take (and so through any copy-before-write filter).
 * stdbuf makes QEMU's stdout line-buffered on the pipe, so each result is readable when the
 * command returns.
 */
export class GuestIoVm {
  private out = "";
  private cursor = 0;
  readonly exited: Promise<void>;

  private constructor(
    readonly child: ChildProcess,
    readonly qmp: QmpClient,
  ) {
    child.stdout?.on("data", (c: Buffer) => (this.out += c.toString("utf8")));
    this.exited = new Promise((resolve) => child.once("exit", () => resolve()));
  }

  /**
   * `testMonitorSocket`: a second QMP monitor for the test's own commands, leaving the main one
   * (`qmpSocketPath`) to an agent process.
   */
  static async start(opts: SystemVmOptions, testMonitorSocket?: string): Promise<GuestIoVm> {
    rmSync(opts.qmpSocketPath, { force: true });
    const extra = testMonitorSocket ? ["-chardev", `socket,id=test-qmp,path=${testMonitorSocket},server=on,wait=off`, "-mon", "chardev=test-qmp,mode=control"] : [];
    if (testMonitorSocket) rmSync(testMonitorSocket, { force: true });
    const args = systemVmArgs({ ...opts, extraArgs: [...(opts.extraArgs ?? []), ...extra] });
    const child = spawn("stdbuf", ["-oL", "qemu-system-x86_64", ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stderr?.on("data", (c: Buffer) => (stderr += c.toString("utf8")));
    const socket = testMonitorSocket ?? opts.qmpSocketPath;
    await waitFor(
      `QMP socket of qemu-system-x86_64`,
      () => (existsSync(socket) && existsSync(opts.qmpSocketPath) ? true : child.exitCode !== null ? Promise.reject(new Error(`qemu exited: ${stderr}`)) : undefined),
      30_000,
      20,
    );
    const qmp = await QmpClient.connect({ socketPath: socket });
    return new GuestIoVm(child, qmp);
  }

  /** A write through the device; throws unless qemu-io reports every byte written. */
  async write(qdev: string, pattern: number, offset: number, length: number): Promise<void> {
    await this.io(qdev, `write -P 0x${pattern.toString(16)} ${offset} ${length}`, new RegExp(`^wrote ${length}/${length} bytes at offset ${offset}$`, "m"));
  }

  /** Reads through the device and checks every byte is `pattern`; throws on any mismatch or error. */
  async readVerify(qdev: string, pattern: number, offset: number, length: number): Promise<void> {
    await this.io(qdev, `read -P 0x${pattern.toString(16)} ${offset} ${length}`, new RegExp(`^read ${length}/${length} bytes at offset ${offset}$`, "m"));
  }

  private async io(qdev: string, command: string, ok: RegExp): Promise<void> {
    const monitor = await this.qmp.humanMonitorCommand(`qemu-io -d ${qdev} "${command}"`);
    if (monitor.trim()) throw new Error(`qemu-io ${command}: ${monitor.trim()}`);
    const result = await waitFor(
      `qemu-io output for '${command}'`,
      () => {
        const fresh = this.out.slice(this.cursor);
        if (/failed|error|verification/i.test(fresh)) return { ok: false, text: fresh };
        return ok.test(fresh) ? { ok: true, text: fresh } : undefined;
      },
      30_000,
      10,
    );
    this.cursor = this.out.length;
    if (!result.ok) throw new Error(`qemu-io ${command} failed: ${result.text.trim()}`);
  }

  async quit(): Promise<void> {
    await this.qmp.execute("quit").catch(() => undefined);
    await this.exited;
    await this.qmp.close();
  }

  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.exited;
    await this.qmp.close().catch(() => undefined);
  }
}

/** Mounts a tmpfs of `sizeMiB` at `dir` (root only); fails loudly rather than skipping. */
export function mountTmpfs(dir: string, sizeMiB: number): () => void {
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeMiB}m,mode=0700`, "tmpfs", dir], { stdio: "pipe" });
  } catch (err) {
    const detail = (err as { stderr?: Buffer }).stderr?.toString().trim() ?? (err as Error).message;
    throw new Error(`this test needs a ${sizeMiB} MiB tmpfs at ${dir} and mount refused (${detail}): run it as root on a host that allows tmpfs mounts`);
  }
  return () => execFileSync("umount", ["-l", dir]);
}
