import type { Logger } from "../../common/logger.js";
import { QreplicaError } from "../../common/errors.js";
import type { RelationshipState } from "../../ledger/index.js";
import type { FailoverService } from "../failover/failoverService.js";
import type { ExtensionLedger, ExtensionState } from "./extensionLedger.js";

/** Without a configured interval the agent cuts every this many seconds (a reverse agent's too). */
const DEFAULT_INTERVAL_SECONDS = 2;

export interface FollowDeps {
  siteId: string;
  loadRelationship(vmId: string): Promise<RelationshipState>;
  failovers: Pick<FailoverService, "failoverVmOf" | "releaseFailedOverVm" | "startReverseAgent">;
  /** This site's certificate files: the agent replicates with the site's identity, as the forwarder does. */
  tlsFiles: { caFile: string; certFile: string; keyFile: string };
  ledger: ExtensionLedger;
  logger: Logger;
}

/** The failover VM cannot be replicated on: the message says why and what to do. */
export class FollowFailoverError extends QreplicaError {
  readonly code = "EXTENSION_FOLLOW_FAILED" as const;
}

/**
 * A VM with an extended replica failed over at this site (A -> B -> C, this is B) and the failover
 * was completed: the failover VM is the VM now, and its one replica stays C. An agent on this
 * host (this site's identity, which C accepts as the VM's primary) captures it and replicates it
 * to C, supervised like a reverse-replication agent (detached, restarted, adopted after a site
 * restart). Its Hello presents a generation above the one C last told this site, with the reason:
 * C records the failover upstream, fences the older generation and the agent resyncs by
 * comparison against C's newest point (it holds no change tracking relative to it).
 *
 * Returns undefined when there is nothing to start: the failover is not completed (or there is
 * none), or the VM's monitor already went to an agent (it runs, or is restarted by the site).
 */
export async function followFailover(deps: FollowDeps, state: ExtensionState): Promise<ExtensionState | undefined> {
  const { vmId, target } = state;
  if (!target) return undefined;
  const rel = await deps.loadRelationship(vmId);
  if (rel.state !== "failed-over") return undefined;
  const vm = deps.failovers.failoverVmOf(vmId);
  if (!vm) {
    throw new FollowFailoverError(
      `VM ${vmId} failed over at site ${deps.siteId} but no failover VM runs here (failed over without starting it, or it stopped): ` +
        `nothing to replicate on to site ${target.targetSiteId}; start the VM by a new failover, or stop the extension ('qreplica extend ${vmId} --stop')`,
    );
  }
  // Released to an agent that runs (or that the site restarts): nothing to start. One stopped by
  // 'extend --stop' left the monitor free: extending again starts a new agent.
  if (vm.released && !vm.agentStopped) return undefined;
  // Above every generation the third site told this site: each new agent is a new primary there.
  const told = state.targetGeneration;
  const generation = told > 0 ? told + 1 : 0;
  const reason =
    `VM ${vmId} failed over at site ${deps.siteId} (${rel.failover?.kind ?? "failover"}, to point ${rel.failover?.pointId ?? "?"}, ` +
    `generation ${rel.generation} there); its failover VM replicates on from site ${deps.siteId}`;
  const { qmpSocket } = await deps.failovers.releaseFailedOverVm(vmId);
  const info = deps.failovers.startReverseAgent({
    siteId: deps.siteId,
    vmId,
    qmpSocket,
    disks: rel.disks,
    replicaAddress: target.targetAddress,
    replicaSiteId: target.targetSiteId,
    tls: deps.tlsFiles,
    vmSpec: rel.vmSpec,
    intervalSeconds: target.intervalSeconds || DEFAULT_INTERVAL_SECONDS,
    generation,
    // A third site that never had the VM gets an initial replication: no failover to declare there.
    ...(generation > 0 ? { upstreamFailover: reason } : {}),
  });
  deps.logger.warn(
    { vm: vmId, target: target.targetSiteId, generation: rel.generation, targetGeneration: generation, pid: info.pid, log: info.logFile },
    "the VM failed over here: its failover VM replicates on to the extended replica (the forwarder of points stops)",
  );
  return deps.ledger.recordFollowed(vmId, { generation: rel.generation, targetGeneration: generation, reason, agentPid: info.pid });
}
