import { QreplicaError } from "../../common/errors.js";
import { isWrongExpectedVersionError, type EventStore, type RecordedEvent } from "../../ledger/index.js";
import { requireId } from "../../model/index.js";
import { actorMetadata, type Caller } from "../controlPlane/caller.js";

/**
 * Extended replication (A -> B -> C) as this replica site (B) records it, stream
 * `extension-<vmId>`: where the VM's points are forwarded, and every point forwarded with the
 * point it became on the third site. The ledger is the word on which points were forwarded, so
 * retention keeps every later point after a restart too, and status shows how far it has got.
 */
export const EXTENSION_STREAM_PREFIX = "extension-";
export const EXTENSION_CONFIGURED = "ExtendedReplicationConfigured";
export const EXTENSION_STOPPED = "ExtendedReplicationStopped";
export const POINT_FORWARDED = "PointForwarded";
export const FAILOVER_FOLLOWED = "ExtensionFollowedFailover";

export const extensionStream = (vmId: string) => EXTENSION_STREAM_PREFIX + requireId("VM id", vmId);

export interface ExtensionTarget {
  targetAddress: string;
  targetSiteId: string;
  /** At most one forward per this many seconds; 0: each point as it commits. */
  intervalSeconds: number;
}

export interface ForwardedPoint {
  /** This site's point and its cut-off (the primary's). */
  pointId: string;
  cutoffAt: string;
  /** What it became on the third site. */
  targetPointId: string;
  targetSeq: number;
  /** The third site's generation for the VM, as its HelloAck said. */
  targetGeneration: number;
  /** "resync": compared by chunk hash with the third site's newest point, only what differed sent. */
  kind: "full" | "incremental" | "resync";
  dataBytes: number;
  wireBytes: number;
  /** A resync's bytes of disk compared (undefined for other kinds). */
  comparedBytes?: number;
  forwardedAt: string;
}

/** The VM failed over at this site and an agent replicates the failover VM on to the target. */
export interface FollowedFailover {
  /** This site's generation for the VM (the failover's). */
  generation: number;
  /** The generation the agent presents to the third site (0: a relationship it does not have yet). */
  targetGeneration: number;
  reason: string;
  agentPid: number;
  followedAt: string;
}

export interface ExtensionState {
  vmId: string;
  /** The last failover here the extension followed with an agent. */
  followed: FollowedFailover | undefined;
  target: ExtensionTarget | undefined;
  /** The target before a stop, for status. */
  stoppedTarget: ExtensionTarget | undefined;
  /** Every point forwarded, oldest first (for the matching of points across the three sites). */
  forwarded: ForwardedPoint[];
  /**
   * The newest generation the configured target site told this site (a forward's, or a followed
   * failover's); 0 when nothing went to that site yet. Another site configured as the target
   * starts again from 0: its generations are its own, not the earlier target's.
   */
  targetGeneration: number;
  /** Points forwarded to the configured target site (0 again when another site is configured). */
  targetForwards: number;
  version: bigint | undefined;
}

export class ExtensionNotConfiguredError extends QreplicaError {
  readonly code = "EXTENSION_NOT_CONFIGURED" as const;
}

export class ExtensionInvalidError extends QreplicaError {
  readonly code = "EXTENSION_INVALID" as const;
}

export function foldExtension(vmId: string, events: readonly RecordedEvent[]): ExtensionState {
  const s: ExtensionState = {
    vmId,
    followed: undefined,
    target: undefined,
    stoppedTarget: undefined,
    forwarded: [],
    targetGeneration: 0,
    targetForwards: 0,
    version: events.at(-1)?.version,
  };
  for (const e of events) {
    const d = e.data;
    if (e.type === EXTENSION_CONFIGURED) {
      if ((s.target ?? s.stoppedTarget)?.targetSiteId !== String(d.targetSiteId)) {
        s.targetGeneration = 0;
        s.targetForwards = 0;
      }
      s.target = { targetAddress: String(d.targetAddress), targetSiteId: String(d.targetSiteId), intervalSeconds: Number(d.intervalSeconds ?? 0) };
    } else if (e.type === EXTENSION_STOPPED) {
      s.stoppedTarget = s.target;
      s.target = undefined;
    } else if (e.type === FAILOVER_FOLLOWED) {
      s.followed = {
        generation: Number(d.generation),
        targetGeneration: Number(d.targetGeneration),
        reason: String(d.reason),
        agentPid: Number(d.agentPid),
        followedAt: e.recordedAt.toISOString(),
      };
      s.targetGeneration = s.followed.targetGeneration;
    } else if (e.type === POINT_FORWARDED) {
      s.forwarded.push({
        pointId: String(d.pointId),
        cutoffAt: String(d.cutoffAt),
        targetPointId: String(d.targetPointId),
        targetSeq: Number(d.targetSeq),
        targetGeneration: Number(d.targetGeneration),
        kind: d.kind === "full" || d.kind === "resync" ? d.kind : "incremental",
        dataBytes: Number(d.dataBytes ?? 0),
        wireBytes: Number(d.wireBytes ?? 0),
        ...(d.comparedBytes !== undefined ? { comparedBytes: Number(d.comparedBytes) } : {}),
        forwardedAt: e.recordedAt.toISOString(),
      });
      s.targetGeneration = Number(d.targetGeneration);
      s.targetForwards++;
    }
  }
  return s;
}

const MAX_ATTEMPTS = 5;

/** Reads and changes the extension streams (the site's forwarders and the CLI both use it). */
export class ExtensionLedger {
  constructor(private readonly store: EventStore) {}

  async load(vmId: string): Promise<ExtensionState> {
    return foldExtension(vmId, await this.store.readStream(extensionStream(vmId)));
  }

  /** VMs that have an extension stream (configured now or once). */
  async vmIds(): Promise<string[]> {
    const events = await this.store.readAll({ streamPrefix: EXTENSION_STREAM_PREFIX });
    return [...new Set(events.map((e) => e.stream.slice(EXTENSION_STREAM_PREFIX.length)))];
  }

  async configure(vmId: string, target: ExtensionTarget, caller: Caller): Promise<ExtensionState> {
    checkTarget(target);
    return this.change(vmId, (s) => {
      const same =
        s.target && s.target.targetAddress === target.targetAddress && s.target.targetSiteId === target.targetSiteId && s.target.intervalSeconds === target.intervalSeconds;
      if (same) return undefined;
      if (s.target && s.target.targetSiteId !== target.targetSiteId && s.forwarded.length > 0) {
        throw new ExtensionInvalidError(
          `VM ${vmId} is forwarded to site ${s.target.targetSiteId} already; stop that first ('qreplica extend ${vmId} --stop') to forward to ${target.targetSiteId} instead`,
        );
      }
      return { type: EXTENSION_CONFIGURED, data: { ...target }, metadata: actorMetadata(caller) };
    });
  }

  async stop(vmId: string, caller: Caller): Promise<ExtensionState> {
    return this.change(vmId, (s) => {
      if (!s.target) throw new ExtensionNotConfiguredError(`VM ${vmId} is not forwarded to a third site from this site`);
      return { type: EXTENSION_STOPPED, data: { targetSiteId: s.target.targetSiteId }, metadata: actorMetadata(caller) };
    });
  }

  async recordForwarded(vmId: string, p: Omit<ForwardedPoint, "forwardedAt">): Promise<ExtensionState> {
    return this.change(vmId, () => ({ type: POINT_FORWARDED, data: { ...p }, metadata: { actor: "extended-replication" } }));
  }

  async recordFollowed(vmId: string, f: Omit<FollowedFailover, "followedAt">): Promise<ExtensionState> {
    return this.change(vmId, () => ({ type: FAILOVER_FOLLOWED, data: { ...f }, metadata: { actor: "extended-replication" } }));
  }

  private async change(
    vmId: string,
    decide: (s: ExtensionState) => { type: string; data: Record<string, unknown>; metadata: Record<string, unknown> } | undefined,
  ): Promise<ExtensionState> {
    for (let attempt = 1; ; attempt++) {
      const s = await this.load(vmId);
      const event = decide(s);
      if (!event) return s;
      try {
        await this.store.append(extensionStream(vmId), [event], s.version ?? "no_stream");
        return this.load(vmId);
      } catch (err) {
        if (!isWrongExpectedVersionError(err) || attempt >= MAX_ATTEMPTS) throw err;
      }
    }
  }
}

function checkTarget(t: ExtensionTarget): void {
  if (!/^(\[[0-9A-Fa-f:.]+\]|[^\s:[\]]+):\d{1,5}$/.test(t.targetAddress)) throw new ExtensionInvalidError(`'${t.targetAddress}' is not a host:port address of the third site`);
  if (!t.targetSiteId) throw new ExtensionInvalidError("the third site's id is required (its certificate must name it)");
  if (!Number.isInteger(t.intervalSeconds) || t.intervalSeconds < 0 || t.intervalSeconds > 86_400) {
    throw new ExtensionInvalidError(`interval ${t.intervalSeconds} s: give 0 (each point as it commits) up to 86400`);
  }
}
