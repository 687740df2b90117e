import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { stringify as toYaml } from "yaml";
import type { Logger } from "../../common/logger.js";
import type { JsonObject } from "../../ledger/index.js";
import { requireId } from "../../model/index.js";
import { processAlive, processCommandLine, terminate } from "./processes.js";

// The agent's entry point beside this module: compiled JavaScript when the site runs compiled (a
// package install, dist/), the TypeScript source through tsx when it runs from a checkout (tests).
const COMPILED = import.meta.url.endsWith(".js");
const AGENT_MAIN = fileURLToPath(new URL(`../../../replica-agent/main.${COMPILED ? "js" : "ts"}`, import.meta.url));
// The heap flags this site was started with (bin/qreplica.js's `#!` line: --max-semi-space-size,
// --heap-growing-percent, --expose-gc), so that an agent it starts has the heap an installed agent
// (bin/qreplica-agent.js) has.
const HEAP_FLAGS = process.execArgv.filter((a) => /^--(max-(semi|old)-space-size|heap-growing-percent)=/.test(a) || a === "--expose-gc");
const AGENT_NODE_ARGS = [...HEAP_FLAGS, ...(COMPILED ? [] : ["--import", "tsx"])];

export interface ReverseAgentOptions {
  siteId: string;
  vmId: string;
  qmpSocket: string;
  disks: ReadonlyArray<{ diskId: string }>;
  replicaAddress: string;
  /** The old primary's site id: the agent refuses a server whose certificate names another. */
  replicaSiteId: string;
  tls: { caFile: string; certFile: string; keyFile: string };
  vmSpec: JsonObject;
  intervalSeconds: number;
  generation: number;
  /**
   * Extended replication after a failover here (A -> B -> C, this is B): the agent replicates the
   * failover VM on to the VM's extended replica, and its Hello says why its generation is above
   * that site's (Hello.upstream_failover). Absent for reverse replication.
   */
  upstreamFailover?: string;
}

export interface ReverseAgentInfo {
  pid: number;
  /** Where the agent logs (its stdout and stderr). */
  logFile: string;
  configFile: string;
}

/** `<site>/run/reverse/<vm>`: the reverse agent's config, log, pid and state. */
export const reverseAgentDir = (runDir: string, vmId: string) => join(runDir, "reverse", requireId("VM id", vmId));
export const reverseAgentLogFile = (runDir: string, vmId: string) => join(reverseAgentDir(runDir, vmId), "agent.log");

const RESTART_MIN_MS = 1_000;
const RESTART_MAX_MS = 30_000;
/** How often an adopted agent (not this process's child: no exit event) is checked. */
const ADOPTED_POLL_MS = 2_000;

interface Supervised {
  vmId: string;
  info: ReverseAgentInfo;
  child?: ChildProcess;
  poll?: NodeJS.Timeout;
  backoffMs: number;
  startedAt: number;
  restartTimer?: NodeJS.Timeout;
}

/**
 * Reverse replication is the same machinery pointed the other way: an agent on this host, with
 * this site's identity, capturing the failed-over VM and replicating it to the old primary's site.
 *
 * The site supervises its reverse agents: one that fails (non-zero exit, a signal) is restarted
 * with backoff; one that ends by itself with status 0 (the old primary's site refused it, or a
 * failback stopped its VM) is left ended. Agents run detached, in their own process group, and
 * outlive a site restart on purpose: they hold no site state, and cutting replication because the
 * site's server restarts would widen the RPO. The next start of the site adopts them again (or
 * restarts those that died meanwhile, when their VM still runs).
 */
export class ReverseAgents {
  private readonly agents = new Map<string, Supervised>();
  private detached = false;

  constructor(
    private readonly runDir: string,
    private readonly logger: Logger,
  ) {}

  start(opts: ReverseAgentOptions): ReverseAgentInfo {
    const dir = reverseAgentDir(this.runDir, opts.vmId);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // A new direction (the failover VM's one replica: the old primary, or the extended replica):
    // what an earlier agent of this VM saved (its generation, toward another site) is not this one's.
    rmSync(join(dir, "state"), { recursive: true, force: true });
    const configFile = join(dir, "agent.yaml");
    rmSync(`${configFile}.stopped`, { force: true });
    writeFileSync(configFile, toYaml(agentConfig(opts, dir)), { mode: 0o600 });
    this.stopSupervising(opts.vmId);
    return this.spawnAgent(opts.vmId, { pid: -1, logFile: join(dir, "agent.log"), configFile }).info;
  }

  /**
   * After a site restart: the VM's reverse agent, if one was started here. A live one (its pid
   * runs this agent with this config) is adopted; a dead one is restarted. Undefined when this
   * site never started one for the VM.
   */
  adoptOrRestart(vmId: string): (ReverseAgentInfo & { adopted: boolean }) | undefined {
    const dir = reverseAgentDir(this.runDir, vmId);
    const configFile = join(dir, "agent.yaml");
    if (!existsSync(configFile)) return undefined;
    const info: ReverseAgentInfo = { pid: readPid(join(dir, "agent.pid")) ?? -1, logFile: join(dir, "agent.log"), configFile };
    if (info.pid > 1 && this.isOurAgent(info.pid, configFile)) {
      const s: Supervised = { vmId, info, backoffMs: RESTART_MIN_MS, startedAt: Date.now() };
      this.agents.set(vmId, s);
      this.pollAdopted(s);
      this.logger.info({ vm: vmId, pid: info.pid, log: info.logFile }, "reverse replication agent adopted: it ran on through the site restart");
      return { ...info, adopted: true };
    }
    const s = this.spawnAgent(vmId, info);
    this.logger.warn({ vm: vmId, pid: s.info.pid, log: s.info.logFile }, "reverse replication agent restarted: it had ended while the site was down");
    return { ...s.info, adopted: false };
  }

  /** The pid of the VM's agent while this site supervises it. */
  pidOf(vmId: string): number | undefined {
    return this.agents.get(vmId)?.info.pid;
  }

  /**
   * Ends the VM's agent for good (an operator stopped its replication): no restart, and no
   * adoption at the next site start (its config is set aside). Resolves once the process is gone,
   * so that the VM's monitor is free for the next agent.
   */
  async stop(vmId: string): Promise<void> {
    const dir = reverseAgentDir(this.runDir, vmId);
    const pid = this.agents.get(vmId)?.info.pid ?? readPid(join(dir, "agent.pid"));
    const configFile = join(dir, "agent.yaml");
    this.stopSupervising(vmId);
    if (pid !== undefined && pid > 1 && this.isOurAgent(pid, configFile)) await terminate(pid, 10_000);
    if (existsSync(configFile)) renameSync(configFile, `${configFile}.stopped`);
    this.logger.info({ vm: vmId, pid }, "replication agent of the failover VM stopped");
  }

  /**
   * The VM's last agent was ended for good by stop() (an operator stopped its replication) and no
   * other was started since: the VM's monitor is free, although it was released to an agent once.
   */
  stoppedForGood(vmId: string): boolean {
    const configFile = join(reverseAgentDir(this.runDir, vmId), "agent.yaml");
    return !this.agents.has(vmId) && !existsSync(configFile) && existsSync(`${configFile}.stopped`);
  }

  /** The site stops: its agents keep replicating, unsupervised until the next start adopts them. */
  detach(): void {
    this.detached = true;
    for (const vmId of [...this.agents.keys()]) this.stopSupervising(vmId);
  }

  private spawnAgent(vmId: string, info: ReverseAgentInfo): Supervised {
    const dir = reverseAgentDir(this.runDir, vmId);
    const log = openSync(info.logFile, "a", 0o600);
    const child = spawn(process.execPath, [...AGENT_NODE_ARGS, AGENT_MAIN, "--config", info.configFile], { stdio: ["ignore", log, log], detached: true });
    closeSync(log);
    child.unref();
    const pid = child.pid ?? -1;
    writeFileSync(join(dir, "agent.pid"), String(pid), { mode: 0o600 });
    const previous = this.agents.get(vmId);
    const s: Supervised = { vmId, info: { ...info, pid }, child, backoffMs: previous?.backoffMs ?? RESTART_MIN_MS, startedAt: Date.now() };
    this.agents.set(vmId, s);
    child.once("exit", (code, signal) => this.onExit(s, code, signal));
    this.logger.info({ vm: vmId, pid, log: info.logFile }, "reverse replication agent started");
    return s;
  }

  private onExit(s: Supervised, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.detached || this.agents.get(s.vmId) !== s) return;
    if (code === 0) {
      this.agents.delete(s.vmId);
      this.logger.info({ vm: s.vmId, pid: s.info.pid, log: s.info.logFile }, "reverse replication agent ended by itself (see its log)");
      return;
    }
    this.scheduleRestart(s, `exited (${code ?? signal})`);
  }

  private pollAdopted(s: Supervised): void {
    s.poll = setInterval(() => {
      if (processAlive(s.info.pid)) return;
      clearInterval(s.poll);
      s.poll = undefined;
      this.scheduleRestart(s, "is gone");
    }, ADOPTED_POLL_MS);
    s.poll.unref();
  }

  private scheduleRestart(s: Supervised, why: string): void {
    // An agent that ran well for a while failed afresh: no need to wait long before the next try.
    if (Date.now() - s.startedAt > RESTART_MAX_MS * 2) s.backoffMs = RESTART_MIN_MS;
    this.logger.warn({ vm: s.vmId, pid: s.info.pid, log: s.info.logFile, restartInMs: s.backoffMs }, `reverse replication agent ${why}; restarting it`);
    s.restartTimer = setTimeout(() => {
      if (this.detached || this.agents.get(s.vmId) !== s) return;
      const next = this.spawnAgent(s.vmId, s.info);
      next.backoffMs = Math.min(s.backoffMs * 2, RESTART_MAX_MS);
    }, s.backoffMs);
    s.restartTimer.unref();
  }

  private stopSupervising(vmId: string): void {
    const s = this.agents.get(vmId);
    if (!s) return;
    clearInterval(s.poll);
    clearTimeout(s.restartTimer);
    this.agents.delete(vmId);
  }

  /** A recycled pid must not be taken for the agent: it must run the agent with this config. */
  private isOurAgent(pid: number, configFile: string): boolean {
    const cmdline = processCommandLine(pid);
    return cmdline !== undefined && cmdline.includes(AGENT_MAIN) && cmdline.includes(configFile);
  }
}

function agentConfig(opts: ReverseAgentOptions, dir: string): JsonObject {
  return {
    siteId: opts.siteId,
    stateDir: join(dir, "state"),
    tls: opts.tls,
    vms: [
      {
        id: opts.vmId,
        qmpSocket: opts.qmpSocket,
        nbdSocket: join(dir, "nbd.sock"),
        disks: opts.disks.map((d) => ({ id: d.diskId, node: d.diskId })),
        replicaSite: opts.replicaAddress,
        replicaSiteId: opts.replicaSiteId,
        intervalSeconds: opts.intervalSeconds,
        compressionLevel: 1,
        generation: opts.generation,
        ...(opts.upstreamFailover ? { upstreamFailover: opts.upstreamFailover } : {}),
        ...(Object.keys(opts.vmSpec).length ? { spec: opts.vmSpec } : {}),
      },
    ],
  };
}

function readPid(path: string): number | undefined {
  try {
    const pid = Number(readFileSync(path, "utf8").trim());
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}
