import type { Caller } from "../controlPlane/caller.js";
import type { SiteContext } from "../siteContext.js";

/**
 * `qreplica resync VM` for a VM in manual resync mode whose agent is not connected: the agent is
 * answered RESYNC at its next Hello. Kept in memory only: after a site restart the operator runs
 * the command again (the VM stays resync-required and visible as such meanwhile).
 */
const approvals = new WeakMap<SiteContext, Map<string, Caller>>();

export function approveResync(ctx: SiteContext, vmId: string, caller: Caller): void {
  let byVm = approvals.get(ctx);
  if (!byVm) approvals.set(ctx, (byVm = new Map()));
  byVm.set(vmId, caller);
}

export function isResyncApproved(ctx: SiteContext, vmId: string): boolean {
  return approvals.get(ctx)?.has(vmId) ?? false;
}

/** Once a resync cycle starts the approval is used: its operator is named by ResyncStarted. */
export function takeResyncApproval(ctx: SiteContext, vmId: string): Caller | undefined {
  const caller = approvals.get(ctx)?.get(vmId);
  approvals.get(ctx)?.delete(vmId);
  return caller;
}
