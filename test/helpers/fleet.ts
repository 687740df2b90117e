import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import { NbdClient } from "../../src/qemu/nbd/index.js";
import { startStorageDaemonVm, type StorageDaemonVm } from "../../src/qemu/processes/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { AGENT, startDaemon, type Daemon } from "./processes.js";
import { ledgerEvents } from "./resyncChecks.js";
import type { TwoSites } from "./twoSites.js";

/** Many VMs on one agent: each its own qemu-storage-daemon, written through its guest export. */
export interface Fleet {
  vms: StorageDaemonVm[];
  ids: string[];
  clients: NbdClient[];
}

export interface FleetCommit {
  cycleSeq: number;
  kind: string;
  cutoffAt: string;
  committedAt: string;
}

/** `count` VMs `fleet-0..` with one disk of `diskBytes`, stopped with the fixture's daemons. */
export async function startFleet(t: TwoSites, count: number, diskBytes: number): Promise<Fleet> {
  const vms: StorageDaemonVm[] = [];
  for (let i = 0; i < count; i++) {
    const dir = join(t.dir, `fleet-${i}`);
    mkdirSync(dir);
    const vm = await startStorageDaemonVm(dir, [{ id: "vda", sizeBytes: diskBytes }]);
    t.daemons.push({ child: vm.proc.child, exited: vm.proc.exited.then(() => null), kill: async () => void (await vm.proc.kill()) });
    vms.push(vm);
  }
  const clients = await Promise.all(vms.map((vm) => NbdClient.connect({ socketPath: vm.nbdSocketPath, exportName: "guest-vda" })));
  return { vms, ids: vms.map((_, i) => `fleet-${i}`), clients };
}

/** The agent for the whole fleet (its log: fleet-agent.log in the fixture's directory). */
export function startFleetAgent(t: TwoSites, fleet: Fleet, opts: { intervalSeconds: number; maxCyclesInFlight: number; policy?: string }): Daemon {
  const config = join(t.dir, "fleet-agent.yaml");
  writeFileSync(
    config,
    toYaml({
      siteId: "site-a",
      stateDir: join(t.dir, "fleet-agent-state"),
      maxCyclesInFlight: opts.maxCyclesInFlight,
      metricsListen: "127.0.0.1:0",
      tls: { caFile: join(t.caDir, "ca.crt"), certFile: join(t.dir, "agent-tls", "agent-a.crt"), keyFile: join(t.dir, "agent-tls", "agent-a.key") },
      vms: fleet.vms.map((vm, i) => ({
        id: fleet.ids[i],
        qmpSocket: vm.qmpSocketPath,
        nbdSocket: vm.nbdSocketPath,
        disks: [{ id: "vda", node: "node-vda" }],
        replicaSite: readFileSync(addressFile(t.siteB), "utf8").trim(),
        replicaSiteId: "site-b",
        intervalSeconds: opts.intervalSeconds,
        compressionLevel: 1,
        ...(opts.policy ? { policy: opts.policy } : {}),
      })),
    }),
  );
  const d = startDaemon(AGENT, ["--config", config], join(t.dir, "fleet-agent.log"));
  t.daemons.push(d);
  return d;
}

/** Writes `bytes` of `data` at a rotating offset of every VM's disk. */
export async function writeEverywhere(fleet: Fleet, bytes: number, round: number, data: Buffer): Promise<void> {
  await Promise.all(fleet.clients.map((c) => c.write(((round * bytes) % (c.size - bytes)) & ~0xffff, data.subarray(0, bytes))));
}

export async function fleetCommits(t: TwoSites, vmId: string): Promise<FleetCommit[]> {
  return (await ledgerEvents(t.siteB, vmId)).filter((e) => e.type === "CycleCommitted").map((e) => e.data as unknown as FleetCommit);
}

/** The address the fleet agent logged for its /metrics endpoint. */
export function fleetAgentMetricsAddress(t: TwoSites): string | undefined {
  const line = readFileSync(join(t.dir, "fleet-agent.log"), "utf8")
    .split("\n")
    .find((l) => l.includes("metrics endpoint serving"));
  return line ? (JSON.parse(line) as { address: string }).address : undefined;
}
