import { spawn } from "node:child_process";
import { mkdirSync, openSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { stringify as toYaml } from "yaml";
import type { JsonObject } from "../../ledger/index.js";

const AGENT_MAIN = fileURLToPath(new URL("../../../replica-agent/main.ts", import.meta.url));

export interface ReverseAgentOptions {
  dir: string;
  siteId: string;
  vmId: string;
  qmpSocket: string;
  disks: ReadonlyArray<{ diskId: string }>;
  replicaAddress: string;
  tls: { caFile: string; certFile: string; keyFile: string };
  vmSpec: JsonObject;
  intervalSeconds: number;
  generation: number;
}

/**
 * Reverse replication is the same machinery pointed the other way: an agent on this host, with
 * this site's identity, capturing the failed-over VM and replicating it to the old primary's site.
 */
export function startReverseAgent(opts: ReverseAgentOptions): number {
  mkdirSync(opts.dir, { recursive: true });
  const config = join(opts.dir, "agent.yaml");
  writeFileSync(
    config,
    toYaml({
      siteId: opts.siteId,
      stateDir: join(opts.dir, "state"),
      tls: opts.tls,
      vms: [
        {
          id: opts.vmId,
          qmpSocket: opts.qmpSocket,
          nbdSocket: join(opts.dir, "nbd.sock"),
          disks: opts.disks.map((d) => ({ id: d.diskId, node: d.diskId })),
          replicaSite: opts.replicaAddress,
          intervalSeconds: opts.intervalSeconds,
          compressionLevel: 1,
          generation: opts.generation,
          ...(Object.keys(opts.vmSpec).length ? { spec: opts.vmSpec } : {}),
        },
      ],
    }),
  );
  const log = openSync(join(opts.dir, "agent.log"), "a");
  const child = spawn(process.execPath, ["--import", "tsx", AGENT_MAIN, "--config", config], { stdio: ["ignore", log, log], detached: true });
  child.unref();
  const pid = child.pid ?? -1;
  writeFileSync(join(opts.dir, "qemu.pid"), String(pid)); // picked up by the same cleanup as the site's VMs
  return pid;
}
