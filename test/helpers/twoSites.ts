import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import { afterEach } from "vitest";
import { getSqliteEventStore, loadRelationship, type RelationshipState } from "../../src/ledger/index.js";
import { startStorageDaemonVm, startSystemVm, type QemuProcess, type StorageDaemonVm } from "../../src/qemu/processes/index.js";
import { makeCounterDisk } from "../../guest/index.js";
import { killRecordedVms } from "../../src/site/failover/failoverService.js";
import { processCommandLine } from "../../src/site/failover/processes.js";
import { addressFile, adminCredentialFiles } from "../../src/site/siteConfig.js";
import { AGENT, AGENT_BIN, CLI, CLI_BIN, compiledBinsBuilt, runCli, startDaemon, waitFor, type Daemon } from "./processes.js";
import { makeTmpDir } from "./tmpDir.js";

/** The counter guest (a boot sector that counts on its disk) running in qemu-system-x86_64 on site A. */
export interface CounterGuestVm {
  proc: QemuProcess;
  qmpSocketPath: string;
  nbdSocketPath: string;
  diskPath: string;
  serialLogPath: string;
}

export interface TwoSites {
  guest?: CounterGuestVm;
  dir: string;
  caDir: string;
  siteA: string;
  siteB: string;
  /** A third site's directory (extended replication), made only by tests that `site init` it. */
  siteC: string;
  vm: StorageDaemonVm;
  agentConfig: string;
  daemons: Daemon[];
  /** `env` adds variables, e.g. QREPLICA_FAULT for a crash window (src/common/faultPoints.ts). */
  startSite(siteDir: string, opts?: { env?: Record<string, string> }): Promise<Daemon>;
  /**
   * Starts the agent for the VM (id `vm1` unless given; another id is a new relationship on B).
   * `replicaSite` dials another address than B's own (e.g. a proxy in front of it).
   */
  startAgent(opts?: { vmId?: string; policy?: string; replicaSite?: string; crlFile?: string }): Daemon;
  relationship(vmId?: string, siteDir?: string): Promise<RelationshipState>;
  /** A site's local admin certificate (tls/admin.crt, role admin): what the CLI presents with --dir. */
  admin(siteDir: string): { caFile: string; certFile: string; keyFile: string };
  stopAll(): Promise<void>;
}

async function cli(args: string[]): Promise<string> {
  const r = await runCli(args);
  if (r.code !== 0) throw new Error(`qreplica ${args.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/**
 * Two sites on this machine (A: the primary's, B: the replica), a CA they trust, an agent
 * identity authorized on B, and a qemu-storage-daemon VM "vm1" on A.
 */
export interface TwoSitesOptions {
  diskBytes: number;
  intervalSeconds?: number;
  maxPoints?: number;
  counterGuest?: boolean;
  /** More `site init` options for site B (the replica), e.g. `--launcher libvirt`. */
  siteBInitArgs?: string[];
  /**
   * Start the site servers and the agent through the bins (compiled dist/, `npm run build`), as
   * an installed site and agent run, rather than the sources through tsx (whose transpiler costs
   * each process ~30 MiB and its start-up; the benchmarks measure the installed form).
   */
  compiled?: boolean;
}

/**
 * For a test file: returns `setup(prefix, opts)`, which makes two sites in a fresh temporary
 * directory; whatever a test set up is stopped and removed after it (QR_KEEP=1 keeps the files).
 */
export function twoSitesPerTest(): (prefix: string, opts: TwoSitesOptions) => Promise<TwoSites> {
  let env: TwoSites | undefined;
  let cleanup: (() => void) | undefined;
  afterEach(async () => {
    await env?.stopAll();
    if (!process.env.QR_KEEP) cleanup?.();
    env = undefined;
    cleanup = undefined;
  });
  return async (prefix, opts) => {
    const tmp = makeTmpDir(prefix);
    cleanup = tmp.cleanup;
    env = await setupTwoSites(tmp.path, opts);
    return env;
  };
}

export async function setupTwoSites(dir: string, opts: TwoSitesOptions): Promise<TwoSites> {
  if (opts.compiled && !compiledBinsBuilt()) throw new Error("the compiled bins need dist/: run `npm run build` first");
  const [siteMain, agentMain] = opts.compiled ? [CLI_BIN, AGENT_BIN] : [CLI, AGENT];
  const caDir = join(dir, "ca");
  const siteA = join(dir, "site-a");
  const siteB = join(dir, "site-b");
  await cli(["pki", "create-ca", "--dir", caDir]);
  await cli(["site", "init", "--dir", siteA, "--name", "site-a", "--ca-dir", caDir, "--listen", "127.0.0.1:0"]);
  await cli([
    "site",
    "init",
    "--dir",
    siteB,
    "--name",
    "site-b",
    "--ca-dir",
    caDir,
    "--listen",
    "127.0.0.1:0",
    "--max-points",
    String(opts.maxPoints ?? 100),
    ...(opts.siteBInitArgs ?? []),
  ]);
  await cli(["pki", "issue", "--ca-dir", caDir, "--name", "agent-a", "--out-dir", join(dir, "agent-tls")]);
  await cli(["authorize", "--dir", siteB, "--primary", "agent-a"]);
  const vm = await startStorageDaemonVm(join(dir), [{ id: "vda", sizeBytes: opts.diskBytes }]);
  let guest: CounterGuestVm | undefined;
  if (opts.counterGuest) {
    const guestDir = join(dir, "guest");
    mkdirSync(guestDir, { recursive: true });
    const diskPath = join(guestDir, "vda.qcow2");
    await makeCounterDisk(diskPath, { sizeMiB: 64 });
    const qmpSocketPath = join(guestDir, "qmp.sock");
    const serialLogPath = join(guestDir, "serial.log");
    const proc = await startSystemVm({ qmpSocketPath, disks: [{ nodeName: "vda", path: diskPath, bus: "ide", bootIndex: 0 }], serialLogPath, accel: "tcg", memoryMiB: 64 });
    guest = { proc, qmpSocketPath, nbdSocketPath: join(guestDir, "nbd.sock"), diskPath, serialLogPath };
  }
  const daemons: Daemon[] = [];
  const agentConfig = join(dir, "agent.yaml");
  const t: TwoSites = {
    dir,
    guest,
    caDir,
    siteA,
    siteB,
    siteC: join(dir, "site-c"),
    vm,
    agentConfig,
    daemons,
    async startSite(siteDir, startOpts = {}) {
      const addr = addressFile(siteDir);
      const startedAt = Date.now();
      const d = startDaemon(siteMain, ["site", "serve", "--dir", siteDir], join(siteDir, "site.log"), startOpts.env);
      daemons.push(d);
      await waitFor(
        `site ${siteDir} to listen`,
        () => {
          // Written anew by every start: fresh once its mtime is past this start.
          if (!existsSync(addr) || statSync(addr).mtimeMs < startedAt - 5) return undefined;
          return readFileSync(addr, "utf8").trim() || undefined;
        },
        30_000,
      );
      return d;
    },
    startAgent(startOpts = {}) {
      const address = startOpts.replicaSite ?? readFileSync(addressFile(siteB), "utf8").trim();
      writeFileSync(
        agentConfig,
        toYaml({
          siteId: "site-a",
          stateDir: join(dir, "agent-state"),
          tls: {
            caFile: join(caDir, "ca.crt"),
            certFile: join(dir, "agent-tls", "agent-a.crt"),
            keyFile: join(dir, "agent-tls", "agent-a.key"),
            ...(startOpts.crlFile ? { crlFile: startOpts.crlFile } : {}),
          },
          vms: [
            {
              id: startOpts.vmId ?? "vm1",
              qmpSocket: guest?.qmpSocketPath ?? vm.qmpSocketPath,
              nbdSocket: guest?.nbdSocketPath ?? vm.nbdSocketPath,
              disks: [{ id: "vda", node: guest ? "vda" : "node-vda" }],
              replicaSite: address,
              replicaSiteId: "site-b",
              intervalSeconds: opts.intervalSeconds ?? 1,
              compressionLevel: 1,
              ...(startOpts.policy ? { policy: startOpts.policy } : {}),
              ...(guest ? { spec: { machine: "q35", cpus: 1, memoryMiB: 64, disks: [{ diskId: "vda", bus: "ide", bootIndex: 0 }], nics: [] } } : {}),
            },
          ],
        }),
      );
      const d = startDaemon(agentMain, ["--config", agentConfig], join(dir, "agent.log"));
      daemons.push(d);
      return d;
    },
    admin(siteDir) {
      return { caFile: join(siteDir, "tls", "ca.crt"), ...adminCredentialFiles(siteDir) };
    },
    async relationship(vmId = "vm1", siteDir = siteB) {
      if (!existsSync(join(siteDir, "ledger.sqlite"))) return (await import("../../src/ledger/index.js")).initialRelationshipState(vmId);
      const store = getSqliteEventStore({ path: join(siteDir, "ledger.sqlite"), create: false });
      try {
        return (await loadRelationship(store, vmId)).state;
      } finally {
        await store.close();
      }
    },
    async stopAll() {
      for (const d of daemons) await d.kill("SIGTERM");
      await vm.proc.kill();
      await guest?.proc.kill();
      killRecordedVms(dir);
      // A site killed with SIGKILL leaves its storage daemon behind, and agents a site started for a
      // failover VM run detached on purpose: end them too, by the pids the sites recorded.
      for (const siteDir of [siteA, siteB, join(dir, "site-c")]) {
        const reverseDir = join(siteDir, "run", "reverse");
        const agents = existsSync(reverseDir)
          ? readdirSync(reverseDir).map((vm) => ({ pidfile: join(reverseDir, vm, "agent.pid"), mark: join(reverseDir, vm, "agent.yaml") }))
          : [];
        for (const { pidfile, mark } of [{ pidfile: join(siteDir, "run", "storage-daemon.pid"), mark: undefined }, ...agents]) {
          if (!existsSync(pidfile)) continue;
          const pid = Number(readFileSync(pidfile, "utf8").trim());
          // A recycled pid is somebody else's process: an agent's is killed only while it runs its config.
          if (mark !== undefined && !processCommandLine(pid)?.includes(mark)) continue;
          try {
            process.kill(pid, "SIGKILL");
          } catch {
            // already gone
          }
        }
      }
    },
  };
  return t;
}
