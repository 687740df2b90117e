import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import { getSqliteEventStore, loadRelationship, type RelationshipState } from "../../src/ledger/index.js";
import { startStorageDaemonVm, type StorageDaemonVm } from "../../src/qemu/processes/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { AGENT, CLI, runCli, startDaemon, waitFor, type Daemon } from "./processes.js";

export interface TwoSites {
  dir: string;
  caDir: string;
  siteA: string;
  siteB: string;
  vm: StorageDaemonVm;
  agentConfig: string;
  daemons: Daemon[];
  startSite(siteDir: string): Promise<Daemon>;
  startAgent(): Daemon;
  relationship(vmId?: string): Promise<RelationshipState>;
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
export async function setupTwoSites(dir: string, opts: { diskBytes: number; intervalSeconds?: number; maxPoints?: number }): Promise<TwoSites> {
  const caDir = join(dir, "ca");
  const siteA = join(dir, "site-a");
  const siteB = join(dir, "site-b");
  await cli(["pki", "create-ca", "--dir", caDir]);
  await cli(["site", "init", "--dir", siteA, "--name", "site-a", "--ca-dir", caDir, "--listen", "127.0.0.1:0"]);
  await cli(["site", "init", "--dir", siteB, "--name", "site-b", "--ca-dir", caDir, "--listen", "127.0.0.1:0", "--max-points", String(opts.maxPoints ?? 100)]);
  await cli(["pki", "issue", "--ca-dir", caDir, "--name", "agent-a", "--out-dir", join(dir, "agent-tls")]);
  await cli(["authorize", "--dir", siteB, "--primary", "agent-a"]);
  const vm = await startStorageDaemonVm(join(dir), [{ id: "vda", sizeBytes: opts.diskBytes }]);
  const daemons: Daemon[] = [];
  const agentConfig = join(dir, "agent.yaml");
  const t: TwoSites = {
    dir,
    caDir,
    siteA,
    siteB,
    vm,
    agentConfig,
    daemons,
    async startSite(siteDir) {
      const addr = addressFile(siteDir);
      const startedAt = Date.now();
      const d = startDaemon(CLI, ["site", "serve", "--dir", siteDir], join(siteDir, "site.log"));
      daemons.push(d);
      await waitFor(`site ${siteDir} to listen`, () => {
        // Written anew by every start: fresh once its mtime is past this start.
        if (!existsSync(addr) || statSync(addr).mtimeMs < startedAt - 5) return undefined;
        return readFileSync(addr, "utf8").trim() || undefined;
      }, 30_000);
      return d;
    },
    startAgent() {
      const address = readFileSync(addressFile(siteB), "utf8").trim();
      writeFileSync(
        agentConfig,
        toYaml({
          siteId: "site-a",
          stateDir: join(dir, "agent-state"),
          tls: { caFile: join(caDir, "ca.crt"), certFile: join(dir, "agent-tls", "agent-a.crt"), keyFile: join(dir, "agent-tls", "agent-a.key") },
          vms: [
            {
              id: "vm1",
              qmpSocket: vm.qmpSocketPath,
              nbdSocket: vm.nbdSocketPath,
              disks: [{ id: "vda", node: "node-vda" }],
              replicaSite: address,
              intervalSeconds: opts.intervalSeconds ?? 1,
              compressionLevel: 1,
            },
          ],
        }),
      );
      const d = startDaemon(AGENT, ["--config", agentConfig], join(dir, "agent.log"));
      daemons.push(d);
      return d;
    },
    async relationship(vmId = "vm1") {
      const store = getSqliteEventStore({ path: join(siteB, "ledger.sqlite"), create: false });
      try {
        return (await loadRelationship(store, vmId)).state;
      } finally {
        await store.close();
      }
    },
    async stopAll() {
      for (const d of daemons) await d.kill("SIGTERM");
      await vm.proc.kill();
      // A site killed with SIGKILL leaves its storage daemon behind: end it too.
      for (const siteDir of [siteA, siteB]) {
        const pidfile = join(siteDir, "run", "storage-daemon.pid");
        if (!existsSync(pidfile)) continue;
        try {
          process.kill(Number(readFileSync(pidfile, "utf8").trim()), "SIGKILL");
        } catch {
          // already gone
        }
      }
    },
  };
  return t;
}
