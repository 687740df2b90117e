import type { Logger } from "../../common/logger.js";
import {
  StaleGenerationError,
  acknowledgeGeneration,
  executeCommand,
  failoverOverCancelledOne,
  loadRelationship,
  recogniseCurrentPrimary,
  recogniseUpstreamFailover,
  refuseStaleGeneration,
  type EventStore,
  type RelationshipState,
} from "../../ledger/index.js";

/**
 * A Hello presenting another generation than the relationship's. Accepted (the new state, whose
 * generation the agent is told) after a cancelled failover (the handover) or from the current
 * primary whose agent lost its state while no failover moved the primary; otherwise the refusal
 * is recorded and undefined returned: the caller refuses the Hello as stale.
 */
export async function settleGeneration(
  store: EventStore,
  logger: Logger,
  peer: { vmId: string; presentedGeneration: number; peerIdentity: string; upstreamFailover?: string },
): Promise<RelationshipState | undefined> {
  const { vmId } = peer;
  const input = { presentedGeneration: peer.presentedGeneration, peerIdentity: peer.peerIdentity };
  const accepted = (r: { newState: RelationshipState }) => r.newState;
  const stale = (err: unknown) => {
    if (err instanceof StaleGenerationError) return undefined;
    throw err;
  };
  if (peer.upstreamFailover) {
    // Only a generation above this site's is a failover upstream; any other goes the usual way.
    // A refusal (UpstreamFailoverRefusedError: another identity, no points, failed over here) reaches the caller.
    const current = (await loadRelationship(store, vmId)).state;
    if (input.presentedGeneration > current.generation || failoverOverCancelledOne(current, { ...input, reason: peer.upstreamFailover })) {
      const { newState } = await executeCommand(store, vmId, (s) => recogniseUpstreamFailover(s, { ...input, reason: peer.upstreamFailover! }));
      logger.warn(
        { vm: vmId, identity: input.peerIdentity, from: current.generation, to: newState.generation, reason: peer.upstreamFailover },
        "the primary failed over upstream: new generation recorded, older ones fenced; the new primary resynchronises by comparison",
      );
      return newState;
    }
  }
  const handedOver = await executeCommand(store, vmId, (s) => acknowledgeGeneration(s, input)).then(accepted, stale);
  if (handedOver) {
    logger.info({ vm: vmId, from: input.presentedGeneration, to: handedOver.generation }, "primary adopted the generation of a cancelled failover");
    return handedOver;
  }
  const recognised = await executeCommand(store, vmId, (s) => recogniseCurrentPrimary(s, input)).then(accepted, stale);
  if (recognised) {
    logger.warn(
      { vm: vmId, presented: input.presentedGeneration, current: recognised.generation },
      "the current primary presented an older generation (its agent lost its state); no failover moved the primary, so it is told the current one",
    );
    return recognised;
  }
  await executeCommand(store, vmId, (s) => refuseStaleGeneration(s, input)).catch((err: unknown) =>
    logger.error({ err, vm: vmId }, "could not record the stale-generation refusal"),
  );
  return undefined;
}

/** States in which this site failed the VM over (its failover VM runs, or is about to). */
const FAILED_OVER_HERE: readonly RelationshipState["state"][] = ["failed-over-waiting-completion", "failed-over"];

/**
 * A Hello declaring a failover upstream (extended replication: the VM failed over at the primary
 * site) to a relationship that failed over here as well: two sites would run the VM. The failover
 * here stands, whatever generation the peer presents (it may even equal this site's, both having
 * counted one up from the same one): the peer is refused as stale, which fences its VM, and the
 * refusal is recorded when the generations differ. Returns the refusal's message, or undefined
 * when the Hello goes the usual way.
 */
export async function upstreamFailoverAfterFailoverHere(
  store: EventStore,
  logger: Logger,
  state: RelationshipState,
  peer: { vmId: string; presentedGeneration: number; peerIdentity: string; upstreamFailover?: string },
): Promise<string | undefined> {
  if (!peer.upstreamFailover || peer.peerIdentity !== state.primaryIdentity) return undefined;
  if (state.failover === undefined && !FAILED_OVER_HERE.includes(state.state)) return undefined;
  const input = { presentedGeneration: peer.presentedGeneration, peerIdentity: peer.peerIdentity };
  if (input.presentedGeneration !== state.generation) {
    await executeCommand(store, peer.vmId, (s) => refuseStaleGeneration(s, input)).catch((err: unknown) =>
      logger.error({ err, vm: peer.vmId }, "could not record the stale-generation refusal"),
    );
  }
  logger.warn(
    { vm: peer.vmId, identity: peer.peerIdentity, presented: peer.presentedGeneration, generation: state.generation, reason: peer.upstreamFailover },
    "the primary declares a failover upstream, but the VM failed over here: its agent is refused as stale and fences its VM",
  );
  return (
    `VM ${peer.vmId} failed over at this site (generation ${state.generation}, ${state.state}); the failover upstream that '${peer.peerIdentity}' declares ` +
    `(${peer.upstreamFailover}) came after it, so its agent is stale and fences its VM. To keep that VM instead, cancel the failover here ` +
    `('qreplica failover ${peer.vmId} cancel', possible until it is completed) and resume the VM there`
  );
}

/**
 * A Hello from the primary after a planned failover at the site this one forwards to
 * (FailedOverDownstream): the VM runs there now, so the primary is refused as stale at any
 * generation (its own is still this relationship's), which fences its VM, and the refusal is
 * recorded. Returns the refusal's message, or undefined when the Hello goes the usual way.
 */
export async function primaryFailedOverDownstream(
  store: EventStore,
  logger: Logger,
  state: RelationshipState,
  peer: { vmId: string; presentedGeneration: number; peerIdentity: string },
): Promise<string | undefined> {
  const d = state.downstreamFailover;
  if (!d || peer.peerIdentity !== d.primaryIdentity) return undefined;
  const input = { presentedGeneration: peer.presentedGeneration, peerIdentity: peer.peerIdentity };
  await executeCommand(store, peer.vmId, (s) => refuseStaleGeneration(s, input)).catch((err: unknown) =>
    logger.error({ err, vm: peer.vmId }, "could not record the stale-generation refusal"),
  );
  logger.warn(
    { vm: peer.vmId, identity: peer.peerIdentity, presented: peer.presentedGeneration, failedOverAt: d.targetSiteId },
    "the old primary came back after the VM failed over downstream: its agent is refused as stale and fences its VM",
  );
  return `generation ${peer.presentedGeneration} is stale: ${d.reason}. This primary is no longer authoritative; do not resume its VM`;
}
