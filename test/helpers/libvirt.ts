import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { makeCounterDisk } from "../../guest/index.js";
import { Virsh } from "../../replica-agent/capture/libvirt/virsh.js";
import { waitFor } from "./processes.js";

/**
 * A private libvirtd (with its virtlogd) for one test file: own config, own sockets and pidfiles
 * under `dir`, killed by pid in `stop()`. libvirtd running as root keeps its QEMU driver state
 * in /run/libvirt/qemu, which is not configurable: one such daemon at a time on a machine, so the
 * libvirt tests live in one file. Starting fails loudly with the reason (never a silent skip).
 */
export class PrivateLibvirt {
  readonly uri: string;
  readonly virsh: Virsh;
  private readonly domains = new Set<string>();
  readonly children: ChildProcess[] = [];
  readonly stderr: string[] = [];

  private constructor(
    readonly dir: string,
    private readonly pidFiles: string[],
  ) {
    this.uri = `qemu+unix:///system?socket=${join(dir, "sock", "libvirt-sock")}`;
    this.virsh = new Virsh(this.uri);
  }

  static async start(dir: string): Promise<PrivateLibvirt> {
    for (const tool of ["libvirtd", "virtlogd", "virsh"]) {
      if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0)
        throw new Error(
          `${tool} is not installed: the libvirt tests need it (apt-get install -y --no-install-recommends libvirt-daemon-system libvirt-clients; scripts/install.sh does this)`,
        );
    }
    mkdirSync(join(dir, "sock"), { recursive: true });
    // QEMU (as root, see the domain's seclabel) creates sockets and scratch files below dir.
    chmodSync(dir, 0o711);
    const conf = join(dir, "libvirtd.conf");
    writeFileSync(
      conf,
      [`unix_sock_dir = "${join(dir, "sock")}"`, 'unix_sock_rw_perms = "0700"', 'unix_sock_ro_perms = "0700"', 'auth_unix_rw = "none"', 'auth_unix_ro = "none"', ""].join("\n"),
    );
    const logdPid = join(dir, "virtlogd.pid");
    const libvirtdPid = join(dir, "libvirtd.pid");
    const lv = new PrivateLibvirt(dir, [libvirtdPid, logdPid]);
    // In the foreground as children of the test process (no -d): they are reaped when they end.
    const spawnDaemon = (cmd: string, args: string[]) => {
      const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
      child.stderr.on("data", (c: Buffer) => lv.stderr.push(c.toString()));
      lv.children.push(child);
    };
    // virtlogd's socket path is fixed: one that runs (an earlier run's) is reused.
    const logdRuns = spawnSync("pgrep", ["-x", "virtlogd"]).status === 0;
    if (!logdRuns) {
      rmSync("/run/libvirt/virtlogd-sock", { force: true });
      spawnDaemon("virtlogd", ["-p", logdPid]);
    }
    if (spawnSync("pgrep", ["-x", "libvirtd"]).status === 0)
      throw new Error("another libvirtd runs on this machine: the libvirt tests need their own (its QEMU driver state dir /run/libvirt/qemu is shared)");
    // Its own qemu.conf (bind-mounted in a private mount namespace; libvirtd as root reads only
    // /etc/libvirt/qemu.conf): QEMU runs as root, so libvirt finds /dev/kvm as QEMU would and
    // keeps its probed QEMU capabilities. Otherwise (/dev/kvm root-only, QEMU as libvirt-qemu) it
    // re-probes QEMU at every lookup, and one `virsh define` takes about 50 s.
    const qemuConf = join(dir, "qemu.conf");
    writeFileSync(qemuConf, 'user = "root"\ngroup = "root"\ndynamic_ownership = 0\n');
    spawnDaemon("unshare", [
      "-m",
      "--propagation",
      "private",
      "sh",
      "-c",
      'mount --bind "$1" /etc/libvirt/qemu.conf && exec libvirtd -f "$2" -p "$3"',
      "sh",
      qemuConf,
      conf,
      libvirtdPid,
    ]);
    try {
      await waitFor("libvirtd's socket", async () => ((await lv.virsh.run(["list", "--all"]).catch(() => undefined)) === undefined ? undefined : true), 30_000, 100);
    } catch (err) {
      lv.stop();
      throw new Error(`libvirtd did not start: ${lv.stderr.join("").trim() || (err as Error).message}`);
    }
    return lv;
  }

  /**
   * The counter guest as a TCG domain on a qcow2 IDE disk (the boot sector loads from IDE). QEMU
   * runs as root for it (static DAC label): the test's files need no chown to libvirt-qemu.
   */
  async defineCounterDomain(name: string, diskDir: string, sizeMiB = 64): Promise<LibvirtTestDomain> {
    mkdirSync(diskDir, { recursive: true });
    const diskPath = join(diskDir, `${name}.qcow2`);
    await makeCounterDisk(diskPath, { sizeMiB });
    const d = new LibvirtTestDomain(this, name, diskPath, join(diskDir, `${name}.serial.log`), join(diskDir, `${name}.xml`));
    writeFileSync(d.xmlPath, counterDomainXml(name, diskPath, d.serialLogPath));
    await d.define();
    this.domains.add(name);
    return d;
  }

  /** Destroys and undefines every domain of this private libvirtd (the test's and those a site under test launched), then kills libvirtd and virtlogd by pid. */
  stop(): void {
    const listed = spawnSync("virsh", ["-q", "-c", this.uri, "list", "--all", "--name"], { encoding: "utf8" }).stdout ?? "";
    for (const name of listed
      .split("\n")
      .map((l) => l.trim())
      .filter(Boolean))
      this.domains.add(name);
    for (const name of this.domains) {
      spawnSync("virsh", ["-c", this.uri, "destroy", name]);
      spawnSync("virsh", ["-c", this.uri, "undefine", name, "--checkpoints-metadata"]);
    }
    for (const f of this.pidFiles) {
      if (!existsSync(f)) continue;
      const pid = Number(readFileSync(f, "utf8").trim());
      if (pid > 0) spawnSync("kill", [String(pid)]);
    }
    for (const c of this.children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGTERM");
    // QEMU of a domain libvirtd did not get to destroy (the daemon died first).
    for (const name of this.domains) {
      const pidFile = `/run/libvirt/qemu/${name}.pid`;
      if (existsSync(pidFile)) spawnSync("kill", ["-9", readFileSync(pidFile, "utf8").trim()]);
    }
  }
}

export function counterDomainXml(name: string, diskPath: string, serialLogPath: string): string {
  return `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${diskPath}'/>
      <target dev='hda' bus='ide'/>
    </disk>
    <serial type='file'><source path='${serialLogPath}'/><target port='0'/></serial>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
</domain>
`;
}

export class LibvirtTestDomain {
  constructor(
    private readonly lv: PrivateLibvirt,
    readonly name: string,
    readonly diskPath: string,
    readonly serialLogPath: string,
    readonly xmlPath: string,
  ) {}

  define(): Promise<string> {
    return this.lv.virsh.run(["define", this.xmlPath]);
  }

  start(): Promise<string> {
    return this.lv.virsh.run(["start", this.name]);
  }

  /**
   * A qemu-io command (`write`/`read` [-P pattern] OFFSET LENGTH) through the guest's IDE device
   * (libvirt's alias ide0-0-0), tracked like a guest write. HMP's qemu-io prints its result to
   * QEMU's stdout, which libvirt logs, not to the monitor: the command's own result line (its
   * offset named) is awaited in the domain's log, so no later command reads it, and a failure throws.
   */
  async write(command: string): Promise<void> {
    const log = `/var/log/libvirt/qemu/${this.name}.log`;
    const from = existsSync(log) ? statSync(log).size : 0;
    const words = command.trim().split(/\s+/);
    const done = new RegExp(`^(?:wrote|read) \\d+/\\d+ bytes at offset ${words[words.length - 2]}$|^(?:write|read) failed`, "m");
    const out = await this.lv.virsh.run(["qemu-monitor-command", this.name, "--hmp", `qemu-io -d ide0-0-0 "${command}"`]);
    if (/error|failed|invalid/i.test(out)) throw new Error(`qemu-io ${command}: ${out.trim()}`);
    const text = await waitFor(
      `qemu-io's result of "${command}" in ${log}`,
      () => {
        const fd = openSync(log, "r");
        try {
          const buf = Buffer.alloc(Math.max(0, statSync(log).size - from));
          readSync(fd, buf, 0, buf.length, from);
          const t = buf.toString();
          return done.test(t) ? t : undefined;
        } finally {
          closeSync(fd);
        }
      },
      10_000,
      5,
    );
    if (/failed|error/i.test(text)) throw new Error(`qemu-io ${command} in domain ${this.name}: ${text.trim()}`);
  }

  qemuPid(): number {
    return Number(readFileSync(`/run/libvirt/qemu/${this.name}.pid`, "utf8").trim());
  }

  /** kill -9 of the domain's QEMU: its bitmaps are not stored, libvirt sees the domain crash. */
  async crash(): Promise<void> {
    execFileSync("kill", ["-9", String(this.qemuPid())]);
    await waitFor(`domain ${this.name} shut off`, async () => ((await this.state()) === "shut off" ? true : undefined), 30_000, 100);
  }

  async state(): Promise<string> {
    return (await this.lv.virsh.run(["domstate", this.name])).trim();
  }

  /** A clean QEMU exit (SIGTERM through libvirt): bitmaps are stored in the qcow2. */
  stopGracefully(): Promise<string> {
    return this.lv.virsh.run(["destroy", this.name, "--graceful"]);
  }
}
