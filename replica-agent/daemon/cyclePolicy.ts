import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "../../src/common/logger.js";
import type { EffectivePolicy } from "../../src/gen/qreplica/v1/replication.js";
import { agentPolicyFromWire, type AgentPolicy } from "../../src/policy/wire.js";
import type { FrequencySpec } from "../../src/policy/types.js";
import type { AgentVmConfig } from "./agentConfig.js";

/** The freeze bound before policies (VmCapture's default). */
const DEFAULT_FREEZE_TIMEOUT_MS = 5_000;

/** A promise resolved from outside, once. */
function signal(): { promise: Promise<void>; resolve(): void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/**
 * The policy one VM's cycles run with: the site's effective policy (HelloAck, then pushes over
 * the open stream), or the VM's config while the site sends none (an older site, or a VM bound to
 * no policy). A change applies from the next cycle, without a restart: a new frequency goes to
 * the agent's scheduler, which re-times the wait for this VM's next cycle at once.
 */
export class CyclePolicy {
  current: AgentPolicy;
  private changed = signal();

  constructor(
    private readonly vm: AgentVmConfig,
    private readonly logger: Logger,
    /** Told a changed frequency: the agent's scheduler re-times this VM's next cycle with it. */
    private readonly onFrequency: (f: FrequencySpec) => void = () => undefined,
  ) {
    this.current = this.fromConfig();
  }

  /** The frequency as the scheduler takes it. */
  get frequency(): FrequencySpec {
    const f = this.current.frequency;
    return f.kind === "interval" ? { kind: "interval", seconds: f.ms / 1000 } : { kind: "continuous", minGapSeconds: f.minGapMs / 1000 };
  }

  private fromConfig(): AgentPolicy {
    return {
      name: "config",
      version: 0,
      frequency: { kind: "interval", ms: this.vm.intervalSeconds * 1000 },
      compressionLevel: this.vm.compressionLevel,
      bandwidth: [],
      resync: { mode: this.vm.resync },
    };
  }

  /** "gold@3", or "config" for the VM's own values. */
  get label(): string {
    return this.current.version === 0 ? this.current.name : `${this.current.name}@${this.current.version}`;
  }

  use(wire: EffectivePolicy | undefined, via: "hello" | "push"): void {
    const before = JSON.stringify(this.current);
    const frequencyBefore = JSON.stringify(this.current.frequency);
    this.current = wire ? agentPolicyFromWire(wire) : this.fromConfig();
    const p = this.current;
    if (via === "push" || before !== JSON.stringify(p)) {
      const frequency = p.frequency.kind === "interval" ? `${p.frequency.ms / 1000}s` : `continuous (min gap ${p.frequency.minGapMs} ms)`;
      this.logger.info(
        { vm: this.vm.id, policy: this.label, frequency, compressionLevel: p.compressionLevel, via },
        via === "push" ? "policy changed by the replica site: it applies from the next cycle" : "policy in effect",
      );
    }
    if (JSON.stringify(p.frequency) !== frequencyBefore) this.onFrequency(this.frequency);
    const woken = this.changed;
    this.changed = signal();
    woken.resolve();
  }

  /**
   * Holds the initial replication until the policy's `initialReplication.at`, else the VM config's (re-read when a new
   * policy arrives). True once it is due; false when one of `others` settled or `stop` fired first.
   */
  async untilInitialReplication(others: Array<Promise<unknown>>, stop: AbortSignal): Promise<boolean> {
    const ended = Promise.race(others).then(() => "other" as const);
    ended.catch(() => undefined);
    let told = false;
    while (!stop.aborted) {
      // A site policy's time wins; without one, this VM's config may hold the copy until a time.
      const configured = this.vm.initialReplication.kind === "at" ? this.vm.initialReplication.at : undefined;
      const at = (this.current.initialReplicationAt ?? configured)?.getTime();
      if (at === undefined || at <= Date.now()) return true;
      if (!told) {
        const by = this.current.initialReplicationAt ? "the policy" : "the VM's config";
        this.logger.info({ vm: this.vm.id, policy: this.label, at: new Date(at).toISOString() }, `initial replication scheduled by ${by}: waiting`);
      }
      told = true;
      const timer = new AbortController();
      const wait = sleep(at - Date.now(), undefined, { signal: AbortSignal.any([stop, timer.signal]) }).then(
        () => "timer" as const,
        () => "timer" as const,
      );
      const woke = await Promise.race([wait, this.changed.promise.then(() => "policy" as const), ended]).finally(() => timer.abort());
      if (woke === "other") return false;
    }
    return false;
  }

  /** When the last application-consistent point was acknowledged (this process's memory: a restart freezes at its first cycle). */
  private lastApplicationConsistentAt: number | undefined;

  /**
   * Whether the next cut-off freezes the guest, and for how long at most. Without a site policy:
   * every cut-off, as before policies (when the VM has a guest agent). With one: only when it asks
   * for application-consistent points and the last one is at least `every` old; a freeze that
   * failed (the guest did not answer) is tried again at the next cut-off.
   */
  quiesceNow(now = Date.now()): { freezeTimeoutMs: number } | undefined {
    if (this.current.version === 0) return { freezeTimeoutMs: DEFAULT_FREEZE_TIMEOUT_MS };
    const ac = this.current.applicationConsistent;
    if (!ac) return undefined;
    const last = this.lastApplicationConsistentAt;
    return last === undefined || now - last >= ac.everySeconds * 1000 ? { freezeTimeoutMs: ac.freezeTimeoutMs } : undefined;
  }

  /** A point was acknowledged: an application-consistent one restarts the count to the next. */
  noteAcknowledged(consistency: "application" | "crash", at = Date.now()): void {
    if (consistency === "application") this.lastApplicationConsistentAt = at;
  }
}
