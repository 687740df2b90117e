import { RejectReason } from "../../gen/qreplica/v1/replication.js";
import {
  UpstreamFailoverRefusedError,
  continuesInitialReplication,
  enableReplication,
  failoverOverCancelledOne,
  markResyncRequired,
  resyncGoAhead,
  updateVmSpec,
  type RelationshipState,
} from "../../ledger/index.js";
import { primaryFailedOverDownstream, settleGeneration, upstreamFailoverAfterFailoverHere } from "./helloGenerations.js";
import type { RelationshipDeps } from "./relationshipDeps.js";
import { RelationshipRefusal, type HelloAccepted, type HelloInput } from "./relationshipInputs.js";

/**
 * A primary's Hello, decided against its VM's relationship: a new relationship, a generation
 * settled or refused, what the primary lost since, and what it sends next.
 */
export async function acceptHello(deps: RelationshipDeps, input: HelloInput): Promise<HelloAccepted> {
  const { vmId } = input;
  let state = await deps.load(vmId);
  if (state.state === "not-enabled" && input.presentedGeneration > 0) {
    // A primary that believes in a generation this site never had: a reverse replication not yet prepared here.
    throw new RelationshipRefusal(
      RejectReason.REJECT_REASON_UNKNOWN_VM,
      `VM ${vmId} has no relationship on this site, but the primary presents generation ${input.presentedGeneration}: prepare the reverse replication here first ('qreplica reverse ${vmId}')`,
    );
  }
  if (state.state === "not-enabled") {
    state = (
      await deps.exec(vmId, (s) =>
        enableReplication(s, {
          primarySiteId: input.primarySiteId,
          replicaSiteId: deps.site.siteId,
          primaryIdentity: input.primaryIdentity,
          disks: input.disks,
          vmSpec: input.vmSpec,
          retention: { maxPoints: deps.site.defaultMaxPoints },
        }),
      )
    ).newState;
  } else {
    const downstream = await primaryFailedOverDownstream(deps.store, deps.logger, state, {
      vmId,
      presentedGeneration: input.presentedGeneration,
      peerIdentity: input.primaryIdentity,
    });
    if (downstream) throw new RelationshipRefusal(RejectReason.REJECT_REASON_STALE_GENERATION, downstream, state.generation);
    if (state.primaryIdentity !== input.primaryIdentity && state.formerPrimaryIdentities?.includes(input.primaryIdentity) && input.presentedGeneration < state.generation) {
      // A primary another site took over from (extended replication's reverse): it is stale, so
      // its agent fences its VM, rather than a stranger refused as unauthorized.
      state = await settleHelloGeneration(deps, input, state);
    }
    if (state.primaryIdentity !== input.primaryIdentity) {
      throw new RelationshipRefusal(RejectReason.REJECT_REASON_UNAUTHORIZED, `VM ${vmId} is replicated here by primary '${state.primaryIdentity}', not '${input.primaryIdentity}'`);
    }
    const fenced = await upstreamFailoverAfterFailoverHere(deps.store, deps.logger, state, {
      vmId,
      presentedGeneration: input.presentedGeneration,
      peerIdentity: input.primaryIdentity,
      ...(input.upstreamFailover ? { upstreamFailover: input.upstreamFailover } : {}),
    });
    if (fenced) throw new RelationshipRefusal(RejectReason.REJECT_REASON_STALE_GENERATION, fenced, state.generation);
    const overCancelled =
      input.upstreamFailover !== undefined &&
      failoverOverCancelledOne(state, { presentedGeneration: input.presentedGeneration, peerIdentity: input.primaryIdentity, reason: input.upstreamFailover });
    if (input.presentedGeneration !== state.generation || overCancelled) state = await settleHelloGeneration(deps, input, state);
  }
  if (input.vmSpec && state.state !== "not-enabled") {
    // The spec's history: a changed launch description is recorded, an unchanged one is not.
    state = (await deps.exec(vmId, (s) => updateVmSpec(s, { vmSpec: input.vmSpec! }))).newState;
  }
  const needsInitialReplication = state.points.length === 0 || state.state === "ready-for-initial-replication" || state.state === "initial-replication-in-progress";
  const seeded = needsInitialReplication && deps.storage.loadSeeds(vmId).length > 0;
  const base = { generation: state.generation, lastCycleSeq: state.lastCycleSeq, needsInitialReplication, seeded };
  if (needsInitialReplication) return { ...base, resume: seeded ? "resync" : "initial" };
  state = await recordTrackingLost(deps, input, state);
  state = await recordForwardingMismatch(deps, input, state);
  if (state.state === "paused") return { ...base, resume: "wait" };
  if (state.state === "resync-required" || state.state === "resynchronising") {
    // The operator's go-ahead is in the ledger: it outlives the connection it was given in and this
    // process. An interrupted initial replication needs none (resyncGoAhead says why).
    const resume = resyncGoAhead(state, { lost: input.trackingLost ?? [], mode: input.resyncMode ?? "automatic" });
    return { ...base, resume, resyncReason: state.resyncReason };
  }
  return { ...base, resume: "incremental" };
}

/**
 * A Hello presenting another generation than the relationship's: accepted for a cancelled
 * failover's handover or a primary that lost its state, else refused as stale (the agent
 * fences its VM: only a real failover leads here).
 */
async function settleHelloGeneration(deps: RelationshipDeps, input: HelloInput, state: RelationshipState): Promise<RelationshipState> {
  const settled = await settleGeneration(deps.store, deps.logger, {
    vmId: input.vmId,
    presentedGeneration: input.presentedGeneration,
    peerIdentity: input.primaryIdentity,
    ...(input.upstreamFailover ? { upstreamFailover: input.upstreamFailover } : {}),
  }).catch((err: unknown) => {
    if (err instanceof UpstreamFailoverRefusedError) throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, err.message, state.generation);
    throw err;
  });
  if (settled) return settled;
  throw new RelationshipRefusal(
    RejectReason.REJECT_REASON_STALE_GENERATION,
    `VM ${input.vmId}: generation ${input.presentedGeneration} is stale, the relationship is at generation ${state.generation}. ` +
      `This primary is no longer authoritative (a failover happened); do not resume its VM`,
    state.generation,
  );
}

/** The agent lost change tracking of some disks: the replica no longer knows what changed. */
async function recordTrackingLost(deps: RelationshipDeps, input: HelloInput, state: RelationshipState): Promise<RelationshipState> {
  const lost = input.trackingLost ?? [];
  if (lost.length === 0 || (state.state !== "replicating" && state.state !== "resynchronising")) return state;
  const reason = lost.map((l) => `${l.diskId}: ${l.code}${l.reason ? ` (${l.reason})` : ""}`).join("; ");
  const { newState } = await deps.exec(input.vmId, (s) => markResyncRequired(s, { reason }));
  if (continuesInitialReplication(newState, lost)) {
    deps.logger.warn(
      { vm: input.vmId, reason },
      "the initial replication's ack never reached the primary: it goes on by comparison with what this site holds, without an operator",
    );
  } else {
    deps.logger.warn({ vm: input.vmId, reason }, "the primary lost change tracking: resync required");
  }
  return newState;
}

/**
 * A forwarding site builds each incremental on the point it last forwarded here (its changes since
 * then, which also cover any later point of its own this site committed without its record). When
 * this site does not hold that point (older points restored here) or the forwarder names none
 * while points are here (it lost its record), the changes would land on the wrong image: a
 * resync by comparison instead.
 */
async function recordForwardingMismatch(deps: RelationshipDeps, input: HelloInput, state: RelationshipState): Promise<RelationshipState> {
  const id = input.forwardedPointId;
  const newest = state.points.at(-1);
  if (id === undefined || !newest || state.state !== "replicating" || state.points.some((p) => p.pointId === id)) return state;
  const reason = id
    ? `site ${input.primarySiteId} last forwarded point ${id} of VM ${input.vmId} here, which this site does not hold (newest ${newest.pointId}): resync by comparison against it`
    : `site ${input.primarySiteId} holds no record of forwarding VM ${input.vmId} here, but this site holds its points (newest ${newest.pointId}): resync by comparison against it`;
  const { newState } = await deps.exec(input.vmId, (s) => markResyncRequired(s, { reason }));
  deps.logger.warn({ vm: input.vmId, reason }, "the forwarding site cannot build on this site's points: resync required");
  return newState;
}
