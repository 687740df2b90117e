import { InvalidCommandInputError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireCount, requireState, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface ReplacePrimaryInput {
  /** The site the VM failed over to (the third site of an extended replication). */
  primarySiteId: string;
  /** Certificate subject CN of that site's reverse agent. */
  primaryIdentity: string;
  /** The failover's generation at that site, which its agent presents. */
  generation: number;
  approvedBy: string;
  approvedByRole: string;
}

const COMMAND = "replacePrimary";

/**
 * Reverse replication from the third site of an extended replication (A -> B -> C, the VM failed
 * over at C) onto this site (B), which already holds the VM's points as A's replica. Unlike a
 * reverse onto a site without the VM, nothing is enabled anew: the relationship takes C as its
 * primary at C's generation, keeps its points and needs a resync, which compares C's disk with
 * the newest point so that only the differences travel. Only a higher generation moves the
 * primary (a failover raised it at C); A's agent, presenting its older one, is fenced.
 */
export function replacePrimary(s: RelationshipState, input: ReplacePrimaryInput): RelationshipEvent[] {
  const primarySiteId = requireText(COMMAND, "primarySiteId", input.primarySiteId);
  const primaryIdentity = requireText(COMMAND, "primaryIdentity", input.primaryIdentity);
  const generation = requireCount(COMMAND, "generation", input.generation, 1);
  requireState(
    s,
    COMMAND,
    ["replicating", "paused", "resync-required", "resynchronising"],
    `VM ${s.vmId} is ${s.state} on this site: only a replica holding its points can take the site it forwarded them to as the new primary.`,
  );
  if (s.points.length === 0) throw new InvalidCommandInputError(`${COMMAND}: VM ${s.vmId} has no recovery point on this site to compare the new primary's disk with`);
  if (primarySiteId === s.replicaSiteId) throw new InvalidCommandInputError(`${COMMAND}: site ${primarySiteId} is this replica itself`);
  if (primaryIdentity === s.primaryIdentity) throw new InvalidCommandInputError(`${COMMAND}: ${primaryIdentity} is the VM's current primary already`);
  if (generation <= s.generation) {
    throw new InvalidCommandInputError(
      `${COMMAND}: VM ${s.vmId} is at generation ${s.generation} here; site ${primarySiteId} presents ${generation}. Only a failover there (a higher generation) moves the primary`,
    );
  }
  return [
    relationshipEvent("PrimaryReplaced", {
      previousPrimarySiteId: s.primarySiteId ?? "",
      previousPrimaryIdentity: s.primaryIdentity ?? "",
      primarySiteId,
      primaryIdentity,
      generation,
      approvedBy: requireText(COMMAND, "approvedBy", input.approvedBy),
      approvedByRole: requireText(COMMAND, "approvedByRole", input.approvedByRole),
    }),
  ];
}
