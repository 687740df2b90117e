import type { Logger } from "../../common/logger.js";
import { cancelDownstreamFailover, executeCommand, type CancelDownstreamFailoverInput, type EventStore, type RelationshipState } from "../../ledger/index.js";
import { actorMetadata, type Caller } from "../controlPlane/caller.js";
import type { ReplicateSession } from "../dataPlane/replicateSession.js";

export interface DownstreamCancelDeps {
  store: EventStore;
  serializer: { run<T>(vmId: string, fn: () => Promise<T>): Promise<T> };
  relationships: { load(vmId: string): Promise<RelationshipState> };
  /** The VM's forwarder runs again (its loop ended at the failover downstream). */
  forwardAgain?(vmId: string): Promise<void>;
  logger: Logger;
}

/**
 * Lifts the fence a planned failover downstream put on the primary (FailedOverDownstream, see
 * cancelDownstreamFailover), once that failover was cancelled at the site it happened at: told by
 * that site over the stream this site forwards on, or by an operator here (`qreplica failover VM
 * cancel` on this site, which the fence's message names for when that site could not tell it).
 * Undefined when no failover downstream is in force for the VM (the caller's ordinary cancel
 * goes on). The forwarder runs again: its next Hello presents the generation it had, which the
 * target's cancel hands over.
 */
export async function liftDownstreamFailover(
  deps: DownstreamCancelDeps,
  vmId: string,
  how: Omit<CancelDownstreamFailoverInput, "targetSiteId" | "recordedAt"> & { targetSiteId?: string; caller?: Caller },
): Promise<RelationshipState | undefined> {
  const d = (await deps.relationships.load(vmId)).downstreamFailover;
  if (!d) return undefined;
  const targetSiteId = how.targetSiteId ?? d.targetSiteId;
  const { newState } = await deps.serializer.run(vmId, () =>
    executeCommand(
      deps.store,
      vmId,
      (s) =>
        cancelDownstreamFailover(s, {
          targetSiteId,
          toldBy: how.toldBy,
          cancelledBy: how.cancelledBy,
          targetGeneration: how.targetGeneration,
          recordedAt: new Date().toISOString(),
        }),
      { metadata: how.caller ? actorMetadata(how.caller) : { actor: how.cancelledBy || targetSiteId } },
    ),
  );
  deps.logger.warn(
    { vm: vmId, target: targetSiteId, toldBy: how.toldBy, cancelledBy: how.cancelledBy || how.caller?.identity, primary: d.primaryIdentity },
    "the failover at the site this one forwards to was cancelled: the primary's agent is accepted here again and forwarding goes on",
  );
  await deps.forwardAgain?.(vmId);
  return newState;
}

/**
 * At the third site (C): a failover cancelled here may have been a planned one relayed through the
 * site that forwards the VM (B), which then fenced the primary's agent. B keeps the stream it
 * relayed on open for this word: told, B lifts the fence. Without that stream (B or the link down,
 * B restarted), B's fence stays and its message names the command that lifts it there; logged here.
 * A forwarding site that fenced nothing ignores the word.
 */
export async function tellForwardingSite(
  ctx: {
    sessionFor(vmId: string): Pick<ReplicateSession, "forwardingSite" | "notify"> | undefined;
    relationships: { load(vmId: string): Promise<RelationshipState> };
    logger: Logger;
  },
  vmId: string,
  caller: Caller,
): Promise<void> {
  const rel = await ctx.relationships.load(vmId);
  const session = ctx.sessionFor(vmId);
  if (session?.forwardingSite) {
    const told = await session.notify({ $case: "failoverCancelled", cancelledBy: caller.identity, generation: rel.generation }).then(
      () => true,
      (err: unknown) => {
        ctx.logger.warn({ vm: vmId, err }, "could not tell the forwarding site that the failover was cancelled");
        return false;
      },
    );
    if (told) {
      ctx.logger.info({ vm: vmId, site: rel.primarySiteId, generation: rel.generation }, "the forwarding site was told that the failover here was cancelled");
      return;
    }
  }
  if (rel.primarySiteId && rel.primarySiteId === rel.primaryIdentity) {
    ctx.logger.warn(
      { vm: vmId, site: rel.primarySiteId },
      `the failover was cancelled, but site ${rel.primarySiteId}, which forwards the VM here, is not connected to be told: if the failover was a planned one ` +
        `through it, its primary stays fenced there until an operator runs 'qreplica failover ${vmId} cancel --dir <${rel.primarySiteId}'s dir>' on it`,
    );
  }
}

/**
 * `qreplica failover VM cancel` (CancelFailover), extended replication's part in it: on a forwarding
 * site whose primary a planned failover downstream fenced, the cancel lifts that fence (the
 * failover was cancelled at that site, which could not say so); anywhere else the ordinary cancel
 * of a failover here (`cancelHere`), after which the site forwarding the VM here is told.
 */
export async function cancelFailoverCommand(
  deps: DownstreamCancelDeps & Parameters<typeof tellForwardingSite>[0] & { cancelHere(vmId: string, caller: Caller): Promise<string> },
  vmId: string,
  caller: Caller,
): Promise<{ state: string; downstreamFenceLifted: boolean }> {
  const lifted = await liftDownstreamFailover(deps, vmId, { toldBy: "operator", cancelledBy: "", targetGeneration: 0, caller });
  if (lifted) return { state: lifted.state, downstreamFenceLifted: true };
  const state = await deps.cancelHere(vmId, caller);
  await tellForwardingSite(deps, vmId, caller);
  return { state, downstreamFenceLifted: false };
}
