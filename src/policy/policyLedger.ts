/**
 * Policies and bindings in the ledger. Each policy has its own stream `policy-<name>`, one
 * `PolicyApplied` per version (a re-apply of the same canonical spec adds none); each VM's binding
 * has its stream `policybinding-<vmId>`, one `PolicyBound` per change. Both are hash-chained and
 * audited like every stream (the metadata names who did it). The book keeps them folded in memory:
 * loaded once at the site's start, then updated by its own appends (the site is their only writer).
 */
import { isWrongExpectedVersionError, type EventStore, type RecordedEvent } from "../ledger/index.js";
import { diffPolicies, policyToSpec, samePolicy, type PolicyChange } from "./canonical.js";
import { UnknownPolicyError, UnknownPolicyVersionError } from "./errors.js";
import { DEFAULT_POLICY_NAME } from "./schema.js";
import type { PolicyVersion, ReplicationPolicy } from "./types.js";

export const POLICY_STREAM_PREFIX = "policy-";
export const BINDING_STREAM_PREFIX = "policybinding-";
export const policyStream = (name: string) => `${POLICY_STREAM_PREFIX}${name}`;
export const bindingStream = (vmId: string) => `${BINDING_STREAM_PREFIX}${vmId}`;
export const POLICY_APPLIED = "PolicyApplied";
export const POLICY_BOUND = "PolicyBound";

/** Who caused an event, as every control command records it (see src/site/controlPlane/caller.ts). */
export interface Actor {
  actor: string;
  actorRole: string;
}

export interface PolicyBinding {
  vmId: string;
  /** "default" for the built-in policy. */
  policyName: string;
  boundBy: string;
  boundAt: string;
  /** Who decided: an operator on the site, or the agent config's `policy:` at a first Hello. */
  source: "site" | "agent-config";
}

export interface ApplyOutcome {
  name: string;
  version: number;
  changed: boolean;
  diff: PolicyChange[];
  policy: ReplicationPolicy;
}

export class PolicyBook {
  private readonly versions = new Map<string, PolicyVersion[]>();
  private readonly bindings = new Map<string, PolicyBinding>();
  /** One write at a time: a version number is decided from what the book holds. */
  private tail: Promise<unknown> = Promise.resolve();

  constructor(private readonly store: EventStore) {}

  /** Folds every policy and binding stream (at the site's start). */
  async load(): Promise<this> {
    this.versions.clear();
    this.bindings.clear();
    for (const prefix of [POLICY_STREAM_PREFIX, BINDING_STREAM_PREFIX]) {
      let from: bigint | undefined;
      for (;;) {
        const page = await this.store.readAll({ fromPosition: from, maxCount: 1000, streamPrefix: prefix });
        for (const e of page) this.fold(e);
        if (page.length < 1000) break;
        from = page[page.length - 1]!.globalPosition;
      }
    }
    return this;
  }

  private fold(e: RecordedEvent): void {
    if (e.type === POLICY_APPLIED) {
      const d = e.data as { name: string; version: number; policy: ReplicationPolicy; appliedAt: string; appliedBy: string };
      const list = this.versions.get(d.name) ?? [];
      list[d.version - 1] = { policy: d.policy, version: d.version, appliedAt: d.appliedAt, appliedBy: d.appliedBy };
      this.versions.set(d.name, list);
    } else if (e.type === POLICY_BOUND) {
      const d = e.data as unknown as PolicyBinding;
      this.bindings.set(d.vmId, { vmId: d.vmId, policyName: d.policyName, boundBy: d.boundBy, boundAt: d.boundAt, source: d.source });
    }
  }

  names(): string[] {
    return [...this.versions.keys()].sort();
  }

  latest(name: string): PolicyVersion | undefined {
    const list = this.versions.get(name);
    return list?.[list.length - 1];
  }

  /** Version `version` (1-based; 0 or absent: the latest); throws naming the policies or versions there are. */
  get(name: string, version?: number): PolicyVersion {
    const list = this.versions.get(name);
    if (!list) throw new UnknownPolicyError(name, this.names());
    if (!version) return list[list.length - 1]!;
    const v = list[version - 1];
    if (!v) throw new UnknownPolicyVersionError(name, version, list.length);
    return v;
  }

  binding(vmId: string): PolicyBinding | undefined {
    return this.bindings.get(vmId);
  }

  allBindings(): PolicyBinding[] {
    return [...this.bindings.values()];
  }

  boundTo(name: string): string[] {
    return this.allBindings()
      .filter((b) => b.policyName === name)
      .map((b) => b.vmId)
      .sort();
  }

  /**
   * Records `policy` as the next version of its name unless it is the latest already (then
   * nothing is written). With `dryRun`, only says what would happen.
   */
  apply(policy: ReplicationPolicy, actor: Actor, opts: { dryRun?: boolean; now?: Date } = {}): Promise<ApplyOutcome> {
    return this.serialized(async () => {
      const latest = this.latest(policy.name);
      const diff = diffPolicies(latest?.policy, policy);
      if (latest && samePolicy(latest.policy, policy)) return { name: policy.name, version: latest.version, changed: false, diff: [], policy: latest.policy };
      const version = (latest?.version ?? 0) + 1;
      if (opts.dryRun) return { name: policy.name, version, changed: true, diff, policy };
      const appliedAt = (opts.now ?? new Date()).toISOString();
      const data = { name: policy.name, version, policy, spec: policyToSpec(policy), appliedAt, appliedBy: actor.actor };
      await this.appendOnce(policyStream(policy.name), POLICY_APPLIED, data, actor, latest ? BigInt(latest.version - 1) : "no_stream");
      this.fold({ type: POLICY_APPLIED, data } as unknown as RecordedEvent);
      return { name: policy.name, version, changed: true, diff, policy };
    });
  }

  /** Binds `vmId` to `policyName` (a stored policy, or "default"); `changed` false when it was so bound already. */
  bind(vmId: string, policyName: string, actor: Actor, source: PolicyBinding["source"], now = new Date()): Promise<{ changed: boolean; binding: PolicyBinding }> {
    return this.serialized(async () => {
      if (policyName !== DEFAULT_POLICY_NAME && !this.versions.has(policyName)) throw new UnknownPolicyError(policyName, this.names());
      const current = this.bindings.get(vmId);
      if (current?.policyName === policyName || (!current && policyName === DEFAULT_POLICY_NAME && source === "agent-config")) {
        return { changed: false, binding: current ?? { vmId, policyName, boundBy: "", boundAt: "", source } };
      }
      const binding: PolicyBinding = { vmId, policyName, boundBy: actor.actor, boundAt: now.toISOString(), source };
      await this.appendOnce(bindingStream(vmId), POLICY_BOUND, { ...binding }, actor, "any");
      this.bindings.set(vmId, binding);
      return { changed: true, binding };
    });
  }

  private async appendOnce(stream: string, type: string, data: Record<string, unknown>, actor: Actor, expected: bigint | "no_stream" | "any"): Promise<void> {
    try {
      await this.store.append(stream, [{ type, data, metadata: { actor: actor.actor, actorRole: actor.actorRole } }], expected);
    } catch (err) {
      // Another writer of the same ledger (a second site process on a shared ledger): refold and let the caller retry.
      if (isWrongExpectedVersionError(err)) await this.load();
      throw err;
    }
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => undefined);
    return run;
  }
}
