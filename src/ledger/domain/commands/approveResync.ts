import { ResyncAlreadyApprovedError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireEnabled, requireState, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface ApproveResyncInput {
  /** The operator's certificate identity (also the event's `actor` metadata). */
  approvedBy: string;
  /** The role bound into that certificate. */
  approvedByRole: string;
}

const COMMAND = "approveResync";

/**
 * An operator's go-ahead for the resync of a resync-required VM (`qreplica resync`; with
 * `resync: manual` the primary waits for it). Recorded rather than held in the site's memory, so
 * it names its operator and survives a site restart: the agent is answered RESYNC at its next
 * Hello, and the ResyncStarted that follows names the same operator. It stands until the resync
 * completes, so an interrupted resync runs again without a second go-ahead.
 *
 * Only a resync-required VM can be approved; a replicating or paused one must be marked
 * resync-required first (the site's Resync command does both in one append). A second go-ahead,
 * or one while a resync runs, is refused rather than ignored: the operator learns who acted first.
 */
export function approveResync(s: RelationshipState, input: ApproveResyncInput): RelationshipEvent[] {
  const approvedBy = requireText(COMMAND, "approvedBy", input.approvedBy);
  const approvedByRole = requireText(COMMAND, "approvedByRole", input.approvedByRole);
  const allowed = ["resync-required"] as const;
  requireEnabled(s, COMMAND, allowed);
  requireState(s, COMMAND, allowed, hintFor(s));
  if (s.resyncApproval) throw new ResyncAlreadyApprovedError(s.vmId, s.resyncApproval.approvedBy);
  return [relationshipEvent("ResyncApproved", { approvedBy, approvedByRole })];
}

function hintFor(s: RelationshipState): string | undefined {
  if (s.state === "replicating" || s.state === "paused") {
    return `VM ${s.vmId}'s change tracking is intact; mark it resync-required first ('qreplica resync' does both).`;
  }
  if (s.state === "resynchronising") {
    const by = s.resyncApproval ? ` (approved by ${s.resyncApproval.approvedBy})` : "";
    return `VM ${s.vmId} is already resynchronising${by}: wait for it to finish.`;
  }
  return undefined;
}
