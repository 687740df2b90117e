import type { ExtendedReplicationStatus } from "../../gen/qreplica/v1/control.js";
import type { RelationshipState } from "../../ledger/index.js";
import type { Caller } from "../controlPlane/caller.js";
import type { ExtensionLedger, ExtensionState, ExtensionTarget } from "./extensionLedger.js";
import { PointForwarder, type ForwarderDeps } from "./forwarder.js";

/**
 * This site's extended replications (A -> B -> C), one forwarder per VM configured to go on to a
 * third site. Holds what retention must keep: the last forwarded point and every later one, so the
 * next forward's changes are exactly the overlays above it (and the third site's chain never
 * misses a change because a point it has not seen was merged into the base).
 */
export class Extensions {
  private readonly states = new Map<string, ExtensionState>();
  private readonly forwarders = new Map<string, PointForwarder>();
  private closed = false;

  constructor(
    private readonly deps: Omit<ForwarderDeps, "ledger">,
    readonly ledger: ExtensionLedger,
  ) {}

  /** At the site's start: every configured extension forwards again from where the ledger says. */
  async start(): Promise<void> {
    for (const vmId of await this.ledger.vmIds()) {
      const state = await this.ledger.load(vmId);
      this.states.set(vmId, state);
      if (state.target) this.run(state);
    }
  }

  async configure(vmId: string, target: ExtensionTarget, caller: Caller): Promise<ExtensionState> {
    const state = await this.ledger.configure(vmId, target, caller);
    await this.forwarders.get(vmId)?.stop();
    this.forwarders.delete(vmId);
    this.states.set(vmId, state);
    this.run(state);
    return state;
  }

  async stop(vmId: string, caller: Caller): Promise<ExtensionState> {
    const state = await this.ledger.stop(vmId, caller);
    await this.forwarders.get(vmId)?.stop();
    this.forwarders.delete(vmId);
    this.states.set(vmId, state);
    return state;
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
    return {
      targetAddress: target?.targetAddress ?? "",
      targetSiteId: target?.targetSiteId ?? "",
      intervalSeconds: target?.intervalSeconds ?? 0,
      state: state.target ? "forwarding" : "stopped",
      lastForwardedPointId: last?.pointId ?? "",
      targetPointId: last?.targetPointId ?? "",
      lastForwardedCutoff: last ? new Date(last.cutoffAt) : undefined,
      pointsForwarded: BigInt(state.forwarded.length),
      pointsPending: pending,
      lastError: this.forwarders.get(vmId)?.lastError ?? "",
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.forwarders.values()].map((f) => f.stop()));
    this.forwarders.clear();
  }

  /** The forwarder's state is the newest (it records each forward); else the one loaded. */
  private current(vmId: string): ExtensionState | undefined {
    return this.forwarders.get(vmId)?.state ?? this.states.get(vmId);
  }

  private run(state: ExtensionState): void {
    if (this.closed || !state.target) return;
    const f = new PointForwarder({ ...this.deps, ledger: this.ledger }, state);
    this.forwarders.set(state.vmId, f);
    f.start();
  }
}
