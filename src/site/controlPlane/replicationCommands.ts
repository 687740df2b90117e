import type { PauseReplicationRequest, RelationshipCommandResponse, ResumeReplicationRequest, ResyncRequest } from "../../gen/qreplica/v1/control.js";
import { executeCommand, pause, requestResync, resume } from "../../ledger/index.js";
import type { SiteContext } from "../siteContext.js";
import { actorMetadata, type Caller } from "./caller.js";

/**
 * `qreplica pause VM`: cycles are refused until resumed; the agent sends none and keeps every
 * change in its bitmap, so the first cycle after the resume carries them all.
 */
export async function pauseReplication(ctx: SiteContext, request: PauseReplicationRequest, caller: Caller): Promise<RelationshipCommandResponse> {
  const reason = request.reason.trim() || `paused by ${caller.identity}`;
  const { newState } = await executeCommand(ctx.store, request.vmId, (s) => pause(s, { reason }), { metadata: actorMetadata(caller) });
  const agentNotified = await ctx.notifyAgent(request.vmId, { $case: "replicationPaused", reason });
  return { state: newState.state, agentNotified };
}

/** `qreplica resume VM`: incremental cycles go on where they stopped. */
export async function resumeReplication(ctx: SiteContext, request: ResumeReplicationRequest, caller: Caller): Promise<RelationshipCommandResponse> {
  const { newState } = await executeCommand(ctx.store, request.vmId, (s) => resume(s), { metadata: actorMetadata(caller) });
  // A failover upstream learnt while paused (extended replication) needs its resync first.
  const agentNotified = await ctx.notifyAgent(request.vmId, { $case: "replicationResumed", resume: newState.state === "resync-required" ? "resync" : "incremental" });
  return { state: newState.state, agentNotified };
}

/**
 * `qreplica resync VM`: a resync by comparison against the newest point. For a VM already
 * resync-required (e.g. `resync: manual` after a crash) this is the go-ahead; a replicating or
 * paused one is first marked resync-required with the operator as the reason. The go-ahead is a
 * ledger event naming the operator: a connected agent is told at once, one that is not connected
 * (even after a site restart) is answered RESYNC at its next Hello.
 */
export async function resync(ctx: SiteContext, request: ResyncRequest, caller: Caller): Promise<RelationshipCommandResponse> {
  const { vmId } = request;
  const approval = { approvedBy: caller.identity, approvedByRole: caller.role };
  const { newState } = await executeCommand(ctx.store, vmId, (s) => requestResync(s, approval), { metadata: actorMetadata(caller) });
  const agentNotified = await ctx.notifyAgent(vmId, { $case: "resyncRequested", requestedBy: caller.identity });
  return { state: newState.state, agentNotified };
}
