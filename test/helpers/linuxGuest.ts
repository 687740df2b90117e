import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { linuxGuestArtifacts, makeExt4Disk } from "../../guest/linux/index.js";
import { QmpClient } from "../../src/qemu/qmp/index.js";
import { startSystemVm, type QemuProcess } from "../../src/qemu/processes/index.js";
import { waitFor } from "./processes.js";

/**
 * The Linux test guest (guest/linux/) in qemu-system-x86_64 under TCG: an ext4 data disk `vda`
 * (virtio) that the guest mounts and keeps writing a counter file to, qemu-ga on the
 * org.qemu.guest_agent.0 port, a root shell on its second serial port, and a second QMP monitor
 * for the test (the agent holds the first).
 */
export class LinuxGuest {
  proc: QemuProcess | undefined;
  private qmp: QmpClient | undefined;
  private shellSocket: net.Socket | undefined;
  private shellOutput = "";
  readonly qmpSocketPath: string;
  readonly testQmpSocketPath: string;
  readonly nbdSocketPath: string;
  readonly qgaSocketPath: string;
  readonly shellSocketPath: string;
  readonly diskPath: string;
  readonly serialLogPath: string;

  private constructor(readonly dir: string) {
    this.qmpSocketPath = join(dir, "qmp.sock");
    this.testQmpSocketPath = join(dir, "test-qmp.sock");
    this.nbdSocketPath = join(dir, "nbd.sock");
    this.qgaSocketPath = join(dir, "qga.sock");
    this.shellSocketPath = join(dir, "shell.sock");
    this.diskPath = join(dir, "vda.qcow2");
    this.serialLogPath = join(dir, "serial.log");
  }

  static async create(dir: string, sizeMiB = 64): Promise<LinuxGuest> {
    mkdirSync(dir, { recursive: true });
    const g = new LinuxGuest(dir);
    await makeExt4Disk(g.diskPath, sizeMiB);
    await g.start();
    return g;
  }

  async start(): Promise<void> {
    const { kernelPath, initrdPath } = await linuxGuestArtifacts();
    for (const s of [this.qmpSocketPath, this.testQmpSocketPath, this.nbdSocketPath, this.qgaSocketPath, this.shellSocketPath]) rmSync(s, { force: true });
    rmSync(this.serialLogPath, { force: true });
    this.proc = await startSystemVm({
      qmpSocketPath: this.qmpSocketPath,
      disks: [{ nodeName: "vda", path: this.diskPath, bus: "virtio" }],
      serialLogPath: this.serialLogPath,
      accel: "tcg",
      memoryMiB: 256,
      extraArgs: [
        "-kernel",
        kernelPath,
        "-initrd",
        initrdPath,
        "-append",
        "console=ttyS0 panic=-1",
        "-no-reboot",
        "-chardev",
        `socket,id=shell,path=${this.shellSocketPath},server=on,wait=off`,
        "-serial",
        "chardev:shell",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        `socket,id=qga0,path=${this.qgaSocketPath},server=on,wait=off`,
        "-device",
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-chardev",
        `socket,id=test-qmp,path=${this.testQmpSocketPath},server=on,wait=off`,
        "-mon",
        "chardev=test-qmp,mode=control",
      ],
    });
    await waitFor(`QEMU's test monitor ${this.testQmpSocketPath}`, () => (existsSync(this.testQmpSocketPath) ? true : undefined), 30_000, 20);
    this.qmp = await QmpClient.connect({ socketPath: this.testQmpSocketPath });
    await waitFor(
      `the Linux guest to boot (${this.serialLogPath})`,
      () => {
        const log = existsSync(this.serialLogPath) ? readFileSync(this.serialLogPath, "utf8") : "";
        const error = /QR-ERROR.*|Kernel panic.*/.exec(log);
        if (error) throw new Error(`the Linux guest failed to boot: ${error[0]}\n${log.slice(-2000)}`);
        if (this.proc && !this.proc.running) throw new Error(`QEMU exited while the guest booted: ${this.proc.stderr}`);
        return log.includes("QR-READY") ? true : undefined;
      },
      120_000,
      100,
    );
  }

  /** Runs a busybox shell command in the guest as root; resolves with its output and status. */
  async shell(command: string, timeoutMs = 30_000): Promise<{ output: string; status: number }> {
    if (!this.shellSocket) {
      const socket = net.createConnection(this.shellSocketPath);
      await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
      socket.on("data", (chunk: Buffer) => (this.shellOutput += chunk.toString("utf8")));
      this.shellSocket = socket;
    }
    this.shellOutput = "";
    this.shellSocket.write(`${command}\n`);
    const done = await waitFor(`the guest shell to run ${JSON.stringify(command)}`, () => /QR-DONE (\d+)\n/.exec(this.shellOutput) ?? undefined, timeoutMs, 20);
    return { output: this.shellOutput.slice(0, done.index).trim(), status: Number(done[1]) };
  }

  /** The counter the guest's application last wrote, as the guest reads it. */
  async counter(): Promise<number> {
    const { output } = await this.shell("cat /data/counter");
    return Number(output.trim().split("\n").at(-1));
  }

  /** QMP on the test's own monitor (the agent holds the other one). */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return this.qmp!.execute<T>(command, args);
  }

  async stop(): Promise<void> {
    this.shellSocket?.destroy();
    this.shellSocket = undefined;
    await this.qmp?.close().catch(() => undefined);
    this.qmp = undefined;
    await this.proc?.kill("SIGKILL");
  }
}
