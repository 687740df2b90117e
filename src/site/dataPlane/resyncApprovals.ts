import type { SiteContext } from "../siteContext.js";

/**
 * `qreplica resync VM` for a VM in manual resync mode whose agent is not connected: the agent is
 * answered RESYNC at its next Hello. Kept in memory only: after a site restart the operator runs
 * the command again (the VM stays resync-required and visible as such meanwhile).
 */
const approvals = new WeakMap<SiteContext, Set<string>>();

export function approveResync(ctx: SiteContext, vmId: string): void {
  let set = approvals.get(ctx);
  if (!set) approvals.set(ctx, (set = new Set()));
  set.add(vmId);
}

export function isResyncApproved(ctx: SiteContext, vmId: string): boolean {
  return approvals.get(ctx)?.has(vmId) ?? false;
}

/** Once a resync cycle starts, the approval has been used. */
export function clearResyncApproval(ctx: SiteContext, vmId: string): void {
  approvals.get(ctx)?.delete(vmId);
}
