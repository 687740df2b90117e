import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import { makeCounterDisk } from "../../guest/index.js";
import { QmpClient } from "../../src/qemu/qmp/index.js";
import { startSystemVm, type QemuProcess } from "../../src/qemu/processes/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { AGENT, startDaemon, waitFor, type Daemon } from "./processes.js";
import type { TwoSites } from "./twoSites.js";

/**
 * The counter guest in qemu-system-x86_64 (TCG) with a second QMP monitor for the test, since
 * the agent holds the first: the test writes through the guest's disk device (HMP qemu-io) while
 * the guest itself keeps writing its counter.
 */
export class CrashGuest {
  proc: QemuProcess | undefined;
  private qmp: QmpClient | undefined;
  readonly qmpSocketPath: string;
  readonly testQmpSocketPath: string;
  readonly nbdSocketPath: string;
  readonly diskPath: string;
  readonly serialLogPath: string;

  private constructor(readonly dir: string) {
    this.qmpSocketPath = join(dir, "qmp.sock");
    this.testQmpSocketPath = join(dir, "test-qmp.sock");
    this.nbdSocketPath = join(dir, "nbd.sock");
    this.diskPath = join(dir, "vda.qcow2");
    this.serialLogPath = join(dir, "serial.log");
  }

  static async create(dir: string, sizeMiB = 64): Promise<CrashGuest> {
    mkdirSync(dir, { recursive: true });
    const g = new CrashGuest(dir);
    await makeCounterDisk(g.diskPath, { sizeMiB });
    await g.start({ paused: false });
    return g;
  }

  /** Starts QEMU on the same disk image (after a crash or a clean stop); `paused`: -S, the guest never runs. */
  async start(opts: { paused: boolean }): Promise<void> {
    for (const s of [this.qmpSocketPath, this.testQmpSocketPath, this.nbdSocketPath]) rmSync(s, { force: true });
    this.proc = await startSystemVm({
      qmpSocketPath: this.qmpSocketPath,
      disks: [{ nodeName: "vda", path: this.diskPath, bus: "ide", bootIndex: 0 }],
      serialLogPath: this.serialLogPath,
      accel: "tcg",
      memoryMiB: 64,
      paused: opts.paused,
      extraArgs: ["-chardev", `socket,id=test-qmp,path=${this.testQmpSocketPath},server=on,wait=off`, "-mon", "chardev=test-qmp,mode=control"],
    });
    // QEMU creates its chardev sockets one after the other: the agent's monitor may be there
    // before the test's.
    await waitFor(`QEMU's test monitor ${this.testQmpSocketPath}`, () => (existsSync(this.testQmpSocketPath) ? true : undefined), 30_000, 20);
    this.qmp = await QmpClient.connect({ socketPath: this.testQmpSocketPath });
  }

  /** QMP on the test's own monitor (the agent holds the other one). */
  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    return this.qmp!.execute(command, args);
  }

  /** A write through the guest's disk device, tracked by the dirty bitmaps like a guest write. */
  async write(command: string): Promise<void> {
    const out = await this.qmp!.humanMonitorCommand(`qemu-io -d vda-dev "${command}"`);
    if (/error|failed|invalid/i.test(out)) throw new Error(`qemu-io ${command}: ${out.trim()}`);
  }

  /** kill -9: QEMU gets no chance to store its persistent bitmaps or flush anything. */
  async crash(): Promise<void> {
    await this.qmp?.close().catch(() => undefined);
    this.qmp = undefined;
    await this.proc?.kill("SIGKILL");
  }

  /** A clean stop: QEMU stores its persistent bitmaps, so a later crash leaves them inconsistent. */
  async stop(): Promise<void> {
    await this.qmp?.close().catch(() => undefined);
    this.qmp = undefined;
    await this.proc?.stop();
  }
}

export interface AgentVm {
  qmpSocketPath: string;
  nbdSocketPath: string;
  disks: Array<{ id: string; node: string }>;
}

/** The counter guest's disk as the agent config names it. */
export const guestDisks = (g: CrashGuest): AgentVm => ({ qmpSocketPath: g.qmpSocketPath, nbdSocketPath: g.nbdSocketPath, disks: [{ id: "vda", node: "vda" }] });

/** An agent replicating VM "vm1" to site B; returns the daemon (stopped with the sites). */
export function startGuestAgent(
  t: TwoSites,
  vm: AgentVm,
  opts: {
    intervalSeconds: number;
    resync?: "manual" | "automatic";
    resyncDigest?: "blake3" | "sha256";
    stateDir?: string;
    logName?: string;
    /** More fields of the VM's entry, e.g. guestAgentSocket or policy. */
    vmExtra?: Record<string, unknown>;
  },
): Daemon {
  const config = join(t.dir, "crash-agent.yaml");
  writeFileSync(
    config,
    toYaml({
      siteId: "site-a",
      stateDir: opts.stateDir ?? join(t.dir, "crash-agent-state"),
      tls: { caFile: join(t.caDir, "ca.crt"), certFile: join(t.dir, "agent-tls", "agent-a.crt"), keyFile: join(t.dir, "agent-tls", "agent-a.key") },
      vms: [
        {
          id: "vm1",
          qmpSocket: vm.qmpSocketPath,
          nbdSocket: vm.nbdSocketPath,
          disks: vm.disks,
          replicaSite: readFileSync(addressFile(t.siteB), "utf8").trim(),
          replicaSiteId: "site-b",
          intervalSeconds: opts.intervalSeconds,
          compressionLevel: 1,
          ...(opts.resync ? { resync: opts.resync } : {}),
          ...(opts.resyncDigest ? { resyncDigest: opts.resyncDigest } : {}),
          ...opts.vmExtra,
        },
      ],
    }),
  );
  const d = startDaemon(AGENT, ["--config", config], join(t.dir, opts.logName ?? "crash-agent.log"));
  t.daemons.push(d);
  return d;
}

export function logTail(path: string, lines = 30): string {
  try {
    return readFileSync(path, "utf8")
      .split("\n")
      .filter((l) => !l.includes('"level":20'))
      .slice(-lines)
      .join("\n");
  } catch {
    return "(no log)";
  }
}
