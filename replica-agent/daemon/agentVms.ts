import { isDeepStrictEqual } from "node:util";
import type { Logger } from "../../src/common/logger.js";
import { errorMessage } from "../../src/common/errors.js";
import { loadSiteCredentials, type SiteCredentials } from "../../src/transport/index.js";
import { loadAgentConfig, type AgentConfig, type AgentVmConfig } from "./agentConfig.js";
import type { CycleScheduler } from "./cycleScheduler.js";
import { VmReplicator } from "./vmReplicator.js";

/** What a reload did, by VM id; `refused` when the new config did not load (nothing changed). */
export interface AgentReload {
  added: string[];
  removed: string[];
  restarted: string[];
  unchanged: string[];
  /** Agent-wide settings that changed but only take effect at the next start of the agent. */
  needRestart: string[];
  refused?: string;
}

interface Running {
  vm: AgentVmConfig;
  replicator: VmReplicator;
  ended: Promise<void>;
}

export type ReplicatorFactory = (vm: AgentVmConfig, config: AgentConfig, tls: SiteCredentials, logger: Logger, scheduler: CycleScheduler) => VmReplicator;

const newReplicator: ReplicatorFactory = (vm, config, tls, logger, scheduler) => new VmReplicator(vm, config.siteId, config.stateDir, tls, logger.child({ vm: vm.id }), scheduler);

/** Settings the running process holds (its scheduler, metrics server, state directory, identity). */
const RESTART_ONLY = ["siteId", "stateDir", "maxCyclesInFlight", "metricsListen"] as const;

/**
 * The agent's VMs as its config lists them, one replicator each. `reload` (SIGHUP) reads the config
 * again and applies the difference: a VM added starts, a VM removed stops, a VM whose settings
 * changed restarts with them, and new TLS files (a renewed certificate) restart every VM so its
 * next connection presents them. Stopping a VM aborts its open cycle: its changes stay in QEMU's
 * dirty bitmap for the next cycle, as after SIGTERM. A config that does not load is refused whole
 * and the agent goes on with the one it has: a typo must not stop replication.
 */
export class AgentVms {
  private readonly running = new Map<string, Running>();
  private reloading: Promise<unknown> = Promise.resolve();
  private busy = 0;
  private stopped = false;
  /** Replicators that threw instead of ending: the agent then exits non-zero (a supervisor restarts it). */
  failures = 0;
  private resolveDone!: () => void;
  /** Resolves once no VM replicates any more: every replicator ended by itself, or `stop()`. */
  readonly done = new Promise<void>((r) => (this.resolveDone = r));

  constructor(
    private config: AgentConfig,
    private tls: SiteCredentials,
    private readonly scheduler: CycleScheduler,
    private readonly logger: Logger,
    private readonly factory: ReplicatorFactory = newReplicator,
  ) {}

  start(): void {
    for (const vm of this.config.vms) this.launch(vm);
    this.checkDone();
  }

  get vmIds(): string[] {
    return [...this.running.keys()];
  }

  /** Rereads `path`; reloads queue behind one another. */
  reload(path: string): Promise<AgentReload> {
    const next = this.reloading.then(() => this.apply(path));
    this.reloading = next.catch(() => undefined);
    return next;
  }

  /** SIGTERM: every replicator stops (open cycles aborted); `done` resolves when they have. */
  stop(): void {
    this.stopped = true;
    for (const r of this.running.values()) r.replicator.stop();
    this.checkDone();
  }

  private async apply(path: string): Promise<AgentReload> {
    const result: AgentReload = { added: [], removed: [], restarted: [], unchanged: [], needRestart: [] };
    if (this.stopped) return { ...result, refused: "the agent is stopping" };
    let config: AgentConfig;
    let tls: SiteCredentials;
    try {
      config = loadAgentConfig(path);
      tls = { ...loadSiteCredentials(config.tls, { logger: this.logger }), ...(this.tls.revocations ? { revocations: this.tls.revocations } : {}) };
    } catch (err) {
      this.logger.error({ err, config: path }, "reload refused: the agent goes on with the config it has");
      return { ...result, refused: errorMessage(err) };
    }
    for (const key of RESTART_ONLY) if (!isDeepStrictEqual(config[key], this.config[key])) result.needRestart.push(key);
    if (config.tls.crlFile !== this.config.tls.crlFile) result.needRestart.push("tls.crlFile");
    const newTls = !(tls.ca.equals(this.tls.ca) && tls.cert.equals(this.tls.cert) && tls.key.equals(this.tls.key));
    // The settings the process keeps stay as they were, so what runs matches what the log says.
    const effective: AgentConfig = { ...config, ...Object.fromEntries(RESTART_ONLY.map((k) => [k, this.config[k]])) };
    const wanted = new Map(effective.vms.map((vm) => [vm.id, vm]));
    this.busy++;
    try {
      const toStop: string[] = [];
      for (const [id, r] of this.running) {
        const vm = wanted.get(id);
        if (!vm) result.removed.push(id);
        else if (newTls || !isDeepStrictEqual(vm, r.vm)) result.restarted.push(id);
        else result.unchanged.push(id);
        if (!vm || result.restarted.includes(id)) toStop.push(id);
      }
      await Promise.all(toStop.map((id) => this.halt(id)));
      this.config = effective;
      this.tls = tls;
      for (const vm of effective.vms) {
        if (this.running.has(vm.id)) continue;
        if (!result.restarted.includes(vm.id)) result.added.push(vm.id);
        this.launch(vm);
      }
    } finally {
      this.busy--;
    }
    if (result.needRestart.length > 0)
      this.logger.warn({ settings: result.needRestart }, "reload: these settings take effect at the agent's next start; the running agent keeps the old values");
    this.logger.info({ added: result.added, removed: result.removed, restarted: result.restarted, unchanged: result.unchanged, newTls }, "config reloaded");
    this.checkDone();
    return result;
  }

  private launch(vm: AgentVmConfig): void {
    const replicator = this.factory(vm, this.config, this.tls, this.logger, this.scheduler);
    const entry: Running = { vm, replicator, ended: Promise.resolve() };
    entry.ended = replicator.run().then(
      () => this.ended(vm.id, entry),
      (err: unknown) => {
        this.failures++;
        this.logger.error({ vm: vm.id, err }, "replicator failed");
        this.ended(vm.id, entry);
      },
    );
    this.running.set(vm.id, entry);
  }

  private async halt(id: string): Promise<void> {
    const r = this.running.get(id);
    if (!r) return;
    r.replicator.stop();
    const slow = setTimeout(() => this.logger.warn({ vm: id }, "reload: waiting for the VM's open cycle to abort before it restarts"), 10_000);
    await r.ended;
    clearTimeout(slow);
  }

  private ended(id: string, entry: Running): void {
    if (this.running.get(id) === entry) this.running.delete(id);
    this.checkDone();
  }

  private checkDone(): void {
    if (this.busy === 0 && this.running.size === 0) this.resolveDone();
  }
}
