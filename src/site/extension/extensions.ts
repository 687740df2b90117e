import type { ExtendedReplicationStatus } from "../../gen/qreplica/v1/control.js";
import type { RelationshipState } from "../../ledger/index.js";
import type { Caller } from "../controlPlane/caller.js";
import { errorMessage } from "../../common/errors.js";
import type { ExtensionLedger, ExtensionState, ExtensionTarget } from "./extensionLedger.js";
import { followFailover, type FollowDeps } from "./followFailover.js";
import { PointForwarder, type ForwarderDeps } from "./forwarder.js";

/** What following a failover here needs besides the forwarder's deps. */
export type ExtensionFollowDeps = Pick<FollowDeps, "tlsFiles"> & {
  failovers: FollowDeps["failovers"] & {
    replicationAgentPid(vmId: string): number | undefined;
    stopReplicationAgent(vmId: string): Promise<void>;
  };
};

/**
 * This site's extended replications (A -> B -> C), one forwarder per VM configured to go on to a
 * third site. Holds what retention must keep: the last forwarded point and every later one, so the
 * next forward's changes are exactly the overlays above it (and the third site's chain never
 * misses a change because a point it has not seen was merged into the base).
 */
export class Extensions {
  private readonly states = new Map<string, ExtensionState>();
  private readonly forwarders = new Map<string, PointForwarder>();
  /** Why the failover VM of a VM is not replicated on (FollowFailoverError), until it is. */
  private readonly followErrors = new Map<string, string>();
  /** One change at a time per VM: two at once would each start a forwarder or an agent, one left unsupervised. */
  private readonly changing = new Map<string, Promise<unknown>>();
  private closed = false;

  constructor(
    private readonly deps: Omit<ForwarderDeps, "ledger">,
    readonly ledger: ExtensionLedger,
    private readonly follow: ExtensionFollowDeps,
  ) {}

  /**
   * At the site's start: every configured extension forwards again from where the ledger says; a VM
   * failed over here keeps its agent (the failover recovery adopted or restarted it before this).
   */
  async start(): Promise<void> {
    for (const vmId of await this.ledger.vmIds()) {
      const state = await this.ledger.load(vmId);
      this.states.set(vmId, state);
      if (state.target) await this.run(state);
    }
  }

  configure(vmId: string, target: ExtensionTarget, caller: Caller): Promise<ExtensionState> {
    return this.exclusive(vmId, () => this.configureNow(vmId, target, caller));
  }

  private async configureNow(vmId: string, target: ExtensionTarget, caller: Caller): Promise<ExtensionState> {
    const state = await this.ledger.configure(vmId, target, caller);
    await this.forwarders.get(vmId)?.stop();
    this.forwarders.delete(vmId);
    this.states.set(vmId, state);
    await this.run(state);
    return this.current(vmId) ?? state;
  }

  stop(vmId: string, caller: Caller): Promise<ExtensionState> {
    return this.exclusive(vmId, () => this.stopNow(vmId, caller));
  }

  private async stopNow(vmId: string, caller: Caller): Promise<ExtensionState> {
    const state = await this.ledger.stop(vmId, caller);
    await this.forwarders.get(vmId)?.stop();
    this.forwarders.delete(vmId);
    this.followErrors.delete(vmId);
    // The failover VM's agent toward the third site ends too (the VM then has no replica).
    // Whether or not the ledger has its FailoverFollowed yet (the site may have died between starting
    // the agent and recording it): a failed-over VM's only agent here is this one.
    if ((await this.deps.loadRelationship(vmId)).state === "failed-over") await this.follow.failovers.stopReplicationAgent(vmId);
    this.states.set(vmId, state);
    return state;
  }

  /** The VM's extended replica, while one is configured (a reverse toward the old primary is refused then). */
  targetOf(vmId: string): ExtensionTarget | undefined {
    return this.current(vmId)?.target;
  }

  /**
   * A failover of the VM completed here: the failover VM is the VM now, and it replicates on to the
   * extended replica with an agent instead of the forwarder (see followFailover).
   */
  failoverCompleted(vmId: string): Promise<void> {
    return this.restart(vmId);
  }

  /** A failover downstream was cancelled (downstreamCancel.ts): the forwarder, whose loop ended at it, runs again. */
  forwardAgain(vmId: string): Promise<void> {
    return this.restart(vmId);
  }

  private restart(vmId: string): Promise<void> {
    return this.exclusive(vmId, async () => {
      const state = this.current(vmId);
      if (!state?.target) return;
      await this.forwarders.get(vmId)?.stop();
      this.forwarders.delete(vmId);
      await this.run(state);
    });
  }

  /** Points retention keeps for the VM's extension: the last forwarded one and all after it. */
  heldPoints(vmId: string, rel: RelationshipState): ReadonlySet<string> {
    const state = this.current(vmId);
    if (!state?.target) return new Set();
    const last = state.forwarded.at(-1);
    const from = last ? rel.points.findIndex((p) => p.pointId === last.pointId) : -1;
    return new Set(from < 0 ? [] : rel.points.slice(from).map((p) => p.pointId));
  }

  /** Whether the VM is, or once was, forwarded from this site (status shows it then). */
  has(vmId: string): boolean {
    return this.current(vmId) !== undefined;
  }

  status(vmId: string, rel: RelationshipState | undefined): ExtendedReplicationStatus | undefined {
    const state = this.current(vmId);
    if (!state || (!state.target && state.forwarded.length === 0)) return undefined;
    const last = state.forwarded.at(-1);
    const pending = rel ? rel.points.filter((p) => !last || Date.parse(p.cutoffAt) > Date.parse(last.cutoffAt)).length : 0;
    const target = state.target ?? state.stoppedTarget;
    const following = state.target !== undefined && state.followed !== undefined && rel?.state === "failed-over";
    // Only a process this site supervises: an agent that ended by itself (fenced by a newer
    // generation at the target, say) is not shown as replicating with its old pid.
    const agentPid = following ? this.follow.failovers.replicationAgentPid(vmId) : undefined;
    const agentGone =
      following && agentPid === undefined
        ? `the failover VM's agent toward site ${target?.targetSiteId} is not running (it ended by itself, e.g. refused there as stale: see SITE_DIR/run/reverse/${vmId}/agent.log); ` +
          `'qreplica extend ${vmId} --stop', then extend again, starts a new one`
        : undefined;
    return {
      targetAddress: target?.targetAddress ?? "",
      targetSiteId: target?.targetSiteId ?? "",
      intervalSeconds: target?.intervalSeconds ?? 0,
      state: following ? "following-failover" : state.target ? "forwarding" : "stopped",
      lastForwardedPointId: last?.pointId ?? "",
      targetPointId: last?.targetPointId ?? "",
      lastForwardedCutoff: last ? new Date(last.cutoffAt) : undefined,
      pointsForwarded: BigInt(state.forwarded.length),
      pointsPending: pending,
      lastError: this.followErrors.get(vmId) ?? agentGone ?? this.forwarders.get(vmId)?.lastError ?? "",
      agentPid: agentPid ?? 0,
      targetGeneration: BigInt(state.targetGeneration),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.forwarders.values()].map((f) => f.stop()));
    this.forwarders.clear();
  }

  private exclusive<T>(vmId: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.changing.get(vmId) ?? Promise.resolve();
    const next = previous.then(fn, fn);
    const settled = next.catch(() => undefined);
    this.changing.set(vmId, settled);
    void settled.then(() => {
      if (this.changing.get(vmId) === settled) this.changing.delete(vmId);
    });
    return next;
  }

  /** The forwarder's state is the newest (it records each forward); else the one loaded. */
  private current(vmId: string): ExtensionState | undefined {
    return this.forwarders.get(vmId)?.state ?? this.states.get(vmId);
  }

  private async run(state: ExtensionState): Promise<void> {
    if (this.closed || !state.target) return;
    const rel = await this.deps.loadRelationship(state.vmId);
    if (rel.state === "failed-over") {
      // The VM's points are gone with the completed failover: its failover VM is what goes on.
      try {
        const followed = await followFailover(
          { ...this.follow, siteId: this.deps.siteId, loadRelationship: this.deps.loadRelationship, ledger: this.ledger, logger: this.deps.logger },
          state,
        );
        if (followed) this.states.set(state.vmId, followed);
        this.followErrors.delete(state.vmId);
      } catch (err) {
        this.followErrors.set(state.vmId, errorMessage(err));
        this.deps.logger.error({ vm: state.vmId, err: errorMessage(err) }, "the failover VM is not replicated on to the extended replica");
      }
      return;
    }
    const f = new PointForwarder({ ...this.deps, ledger: this.ledger }, state);
    this.forwarders.set(state.vmId, f);
    f.start();
  }
}
