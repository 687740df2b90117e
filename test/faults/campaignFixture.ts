import { execFileSync } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, statfsSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import { loadSiteConfig, addressFile } from "../../src/site/siteConfig.js";
import { AGENT, startDaemon, type Daemon } from "../helpers/processes.js";
import { setupTwoSites, type TwoSites } from "../helpers/twoSites.js";
import { FaultProxy } from "./faultProxy.js";

const MiB = 1024 * 1024;

/**
 * What a campaign runs: site B (the replica) with its storage on a small tmpfs, the primary (a
 * qemu-storage-daemon VM), the agent with its scratch on another small tmpfs, and the proxy the
 * agent reaches site B through. Site A is not needed: a failover here is cancelled, never reversed.
 */
export interface Campaign {
  t: TwoSites;
  proxy: FaultProxy;
  site: Daemon;
  agent: Daemon;
  storageDir: string;
  scratchDir: string;
  startAgent(): Daemon;
  startSite(): Promise<Daemon>;
  agentLog: string;
  siteLog: string;
  close(): Promise<void>;
}

export const CAMPAIGN_DISK_BYTES = 16 * MiB;

function mountTmpfs(dir: string, sizeMiB: number): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeMiB}m,mode=0700`, "tmpfs", dir]);
}

function unmount(dir: string): void {
  try {
    execFileSync("umount", ["-l", dir], { stdio: "ignore" });
  } catch {
    // not mounted (setup failed before)
  }
}

export async function startCampaign(dir: string): Promise<Campaign> {
  const t = await setupTwoSites(dir, { diskBytes: CAMPAIGN_DISK_BYTES, intervalSeconds: 1, maxPoints: 6 });
  const storageDir = loadSiteConfig(t.siteB).storageRoot;
  const scratchDir = join(dir, "agent-scratch");
  const mounted: string[] = [];
  try {
    // Room for the base, a handful of overlays and a few big cycles; small enough to fill at once.
    mountTmpfs(storageDir, 96);
    mounted.push(storageDir);
    mountTmpfs(scratchDir, 24);
    mounted.push(scratchDir);
  } catch (err) {
    for (const m of mounted) unmount(m);
    await t.stopAll();
    throw new Error(`the fault campaign mounts tmpfs file systems (run it as root): ${(err as Error).message}`);
  }
  const agentConfig = join(dir, "campaign-agent.yaml");
  const agentLog = join(dir, "agent.log");
  const siteLog = join(t.siteB, "site.log");
  const c: Campaign = {
    t,
    storageDir,
    scratchDir,
    agentLog,
    siteLog,
    site: await t.startSite(t.siteB),
    proxy: await FaultProxy.start(readFileSync(addressFile(t.siteB), "utf8").trim()),
    agent: undefined as unknown as Daemon,
    startAgent() {
      const d = startDaemon(AGENT, ["--config", agentConfig], agentLog);
      t.daemons.push(d);
      c.agent = d;
      return d;
    },
    async startSite() {
      c.site = await t.startSite(t.siteB);
      return c.site;
    },
    async close() {
      await c.proxy.close();
      await t.stopAll();
      for (const m of mounted) unmount(m);
    },
  };
  writeFileSync(
    agentConfig,
    toYaml({
      siteId: "site-a",
      stateDir: join(dir, "agent-state"),
      tls: { caFile: join(t.caDir, "ca.crt"), certFile: join(dir, "agent-tls", "agent-a.crt"), keyFile: join(dir, "agent-tls", "agent-a.key") },
      vms: [
        {
          id: "vm1",
          qmpSocket: t.vm.qmpSocketPath,
          nbdSocket: t.vm.nbdSocketPath,
          disks: [{ id: "vda", node: "node-vda" }],
          replicaSite: c.proxy.address,
          replicaSiteId: "site-b",
          intervalSeconds: 1,
          compressionLevel: 1,
          scratchDir,
        },
      ],
    }),
  );
  c.startAgent();
  return c;
}

/** Fills the file system of `dir` until `leaveBytes` are free (again: `n` names another filler); returns the filler's path. */
export function fill(dir: string, leaveBytes: number, n = 0): string {
  const path = join(dir, `campaign-filler-${n}`);
  const s = statfsSync(dir);
  const free = s.bavail * s.bsize;
  const fd = openSync(path, "w", 0o600);
  try {
    // tmpfs allocates on write, not on truncate: write the bytes.
    const bytes = Math.max(0, free - leaveBytes);
    const block = Buffer.alloc(MiB, 0xee);
    let written = 0;
    while (written < bytes) {
      const n = Math.min(MiB, bytes - written);
      written += writeSyncSafe(fd, block.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return path;
}

function writeSyncSafe(fd: number, buf: Buffer): number {
  try {
    return writeSync(fd, buf);
  } catch {
    // The file system is full already (the site or QEMU raced us for the last bytes).
    return buf.length;
  }
}

export function unfill(path: string): void {
  rmSync(path, { force: true });
}
