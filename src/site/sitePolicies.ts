import type { Logger } from "../common/logger.js";
import { errorMessage } from "../common/errors.js";
import type { EffectivePolicy } from "../gen/qreplica/v1/replication.js";
import type { EventStore } from "../ledger/index.js";
import { defaultPolicy } from "../policy/defaultPolicy.js";
import { PolicyBook, type Actor } from "../policy/policyLedger.js";
import { DEFAULT_POLICY_NAME } from "../policy/schema.js";
import type { ReplicationPolicy } from "../policy/types.js";
import { effectivePolicyToWire } from "../policy/wire.js";

/**
 * The one way the rest of the site asks which policy a VM replicates under (retention tiers,
 * health, HelloAck). Synchronous: the policies are folded in memory at the site's start.
 */
export interface EffectivePolicies {
  /** The VM's policy: the bound one's latest version, or the built-in default (see defaultPolicy). */
  effectivePolicy(vmId: string): ReplicationPolicy;
  /** Its name and version (0 for the built-in default). */
  effectivePolicyVersion(vmId: string): { name: string; version: number };
  /** Called with the VM's id whenever its effective policy changes (an apply of its policy, a new binding). */
  onPolicyChange(listener: (vmId: string) => void): () => void;
}

interface AgentReport {
  intervalSeconds?: number;
  compressionLevel?: number;
  resync: "automatic" | "manual";
}

/** The site's policies: the ledger's book plus what agents report of their own config for the built-in default. */
export class SitePolicies implements EffectivePolicies {
  private readonly reports = new Map<string, AgentReport>();
  private readonly listeners = new Set<(vmId: string) => void>();

  private constructor(
    readonly book: PolicyBook,
    private readonly site: { defaultMaxPoints: number },
    private readonly logger: Logger,
  ) {}

  static async open(store: EventStore, site: { defaultMaxPoints: number }, logger: Logger): Promise<SitePolicies> {
    return new SitePolicies(await new PolicyBook(store).load(), site, logger);
  }

  effectivePolicy(vmId: string): ReplicationPolicy {
    const name = this.book.binding(vmId)?.policyName;
    const bound = name && name !== DEFAULT_POLICY_NAME ? this.book.latest(name) : undefined;
    if (bound) return bound.policy;
    const r = this.reports.get(vmId);
    return defaultPolicy({ maxPoints: this.site.defaultMaxPoints, intervalSeconds: r?.intervalSeconds, compressionLevel: r?.compressionLevel, resync: r?.resync });
  }

  /** The built-in default as `policy show default` prints it (before any agent reported its own interval). */
  builtInDefault(): ReplicationPolicy {
    return defaultPolicy({ maxPoints: this.site.defaultMaxPoints });
  }

  effectivePolicyVersion(vmId: string): { name: string; version: number } {
    const name = this.book.binding(vmId)?.policyName;
    const bound = name && name !== DEFAULT_POLICY_NAME ? this.book.latest(name) : undefined;
    return bound ? { name: bound.policy.name, version: bound.version } : { name: DEFAULT_POLICY_NAME, version: 0 };
  }

  onPolicyChange(listener: (vmId: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * What health takes from the policy (HealthMonitor.policyOf): a bound policy's frequency and RPO
   * alert. Nothing for the built-in default, whose thresholds health infers or takes from site.json.
   */
  healthThresholds(
    vmId: string,
  ): { name: string; frequencySeconds?: number; rpoAlertSeconds: number; verification?: { windowSeconds: number; requiredSince: number } } | undefined {
    const v = this.effectivePolicyVersion(vmId);
    if (v.version === 0) return undefined;
    const p = this.effectivePolicy(vmId);
    const since = p.verification && this.verificationRequiredSince(vmId, p.name, v.version);
    return {
      name: p.name,
      ...(p.frequency.kind === "interval" ? { frequencySeconds: p.frequency.seconds } : {}),
      rpoAlertSeconds: p.rpoAlertSeconds,
      ...(p.verification && since !== undefined ? { verification: { windowSeconds: p.verification.windowSeconds, requiredSince: since } } : {}),
    };
  }

  /**
   * Since when the VM's policy has asked for drills: the first of the latest run of versions with
   * `verification`, or the VM's binding to the policy if later (ms since the epoch).
   */
  private verificationRequiredSince(vmId: string, name: string, version: number): number {
    let first = version;
    while (first > 1 && this.book.get(name, first - 1).policy.verification) first--;
    const applied = Date.parse(this.book.get(name, first).appliedAt);
    const bound = Date.parse(this.book.binding(vmId)?.boundAt ?? "");
    return Number.isNaN(bound) ? applied : Math.max(applied, bound);
  }

  /** What HelloAck and PolicyChanged carry; undefined for the built-in default (the agent keeps its config's values). */
  wireFor(vmId: string): EffectivePolicy | undefined {
    const v = this.effectivePolicyVersion(vmId);
    return v.version === 0 ? undefined : effectivePolicyToWire(this.effectivePolicy(vmId), v.version);
  }

  /**
   * At every Hello: remembers the agent config's own interval and level (the built-in default
   * reports them), and binds the VM to the config's `policy:` when the site has no binding for
   * it yet. A binding made on the site always wins; an unknown name is logged and ignored (the VM
   * replicates under the default until the policy exists and the agent says Hello again).
   */
  async atHello(vmId: string, hello: { policyName: string; intervalSeconds: number; compressionLevel: number; resync: "automatic" | "manual"; identity: string }): Promise<void> {
    this.reports.set(vmId, { intervalSeconds: hello.intervalSeconds || undefined, compressionLevel: hello.compressionLevel || undefined, resync: hello.resync });
    if (!hello.policyName || this.book.binding(vmId)) return;
    if (hello.policyName !== DEFAULT_POLICY_NAME && !this.book.latest(hello.policyName)) {
      this.logger.warn(
        { vm: vmId, policy: hello.policyName },
        `the agent config asks for policy '${hello.policyName}', which this site does not have: the VM replicates under the built-in default until it is applied ('qreplica policy apply FILE')`,
      );
      return;
    }
    try {
      const { changed } = await this.book.bind(vmId, hello.policyName, { actor: hello.identity, actorRole: "agent" }, "agent-config");
      if (changed) this.logger.info({ vm: vmId, policy: hello.policyName }, "VM bound to the policy its agent config names");
    } catch (err) {
      this.logger.warn({ vm: vmId, policy: hello.policyName, err: errorMessage(err) }, "could not bind the VM to its agent config's policy");
    }
  }

  /** Tells the listeners; the control plane pushes to connected agents itself. */
  changed(vmIds: string[]): void {
    for (const vm of vmIds) for (const l of this.listeners) l(vm);
  }

  bind(vmId: string, policyName: string, actor: Actor) {
    return this.book.bind(vmId, policyName, actor, "site");
  }
}
