import { QreplicaError, errorMessage } from "../../common/errors.js";
import type { RelationshipState, ReplicationStateName } from "../../ledger/index.js";
import type { Caller } from "../controlPlane/caller.js";
import type { SiteContext } from "../siteContext.js";

/** States in which this site holds the VM's points as a replica (and forwards them on). */
const REPLICA_STATES: readonly ReplicationStateName[] = ["replicating", "paused", "resync-required", "resynchronising"];

export class ReverseFromTargetRefusedError extends QreplicaError {
  readonly code = "REVERSE_FROM_TARGET_REFUSED" as const;
}

export interface ReverseFromTargetRequest {
  vmId: string;
  generation: number;
  primarySiteId: string;
  primaryIdentity: string;
  seeds: ReadonlyArray<{ diskId: string; imagePath: string }>;
}

/**
 * PrepareReverseReplication on a site that already holds the VM's points as a replica: extended
 * replication (A -> B -> C) after the VM failed over at C, reversed from C onto B. Undefined when
 * this site holds no points of the VM as a replica or never forwarded them (the ordinary reverse
 * then goes on, and refuses a VM replicated here). Only the site this site forwarded the VM to may take it over, at a higher
 * generation (replacePrimary); forwarding to it ends, since it is the primary now.
 */
export async function prepareReverseFromTarget(ctx: SiteContext, caller: Caller, req: ReverseFromTargetRequest): Promise<RelationshipState | undefined> {
  const current = await ctx.relationships.load(req.vmId);
  if (!REPLICA_STATES.includes(current.state) || current.points.length === 0) return undefined;
  const ext = ctx.extensions ? await ctx.extensions.ledger.load(req.vmId) : undefined;
  const forwardedTo = ext && ext.forwarded.length > 0 ? (ext.target ?? ext.stoppedTarget)?.targetSiteId : undefined;
  // Never forwarded from here: an ordinary reverse, which refuses a VM this site replicates.
  if (!forwardedTo) return undefined;
  if (forwardedTo !== req.primarySiteId) {
    throw new ReverseFromTargetRefusedError(
      `site ${ctx.siteId} holds VM ${req.vmId}'s recovery points as the replica of ${current.primarySiteId} (${current.state}, generation ${current.generation}); ` +
        `only ${forwardedTo}, the site it forwarded them to, may reverse onto it, not ${req.primarySiteId}`,
    );
  }
  // The site id above is only the request's label: the identity that becomes the primary (and is
  // authorized here) must be that site's own, the one the forwarder pinned when it dialled it.
  if (req.primaryIdentity !== forwardedTo) {
    throw new ReverseFromTargetRefusedError(
      `site ${ctx.siteId} forwarded VM ${req.vmId} to site ${forwardedTo}, whose certificate identity is '${forwardedTo}': the reverse names '${req.primaryIdentity}' as the new primary; ` +
        `run 'qreplica reverse ${req.vmId}' against site ${forwardedTo} itself, which sends its own identity`,
    );
  }
  if (req.seeds.length > 0) {
    throw new ReverseFromTargetRefusedError(
      `site ${ctx.siteId} holds VM ${req.vmId}'s points: the first cycle compares the new primary's disk with its newest point; give no --seed`,
    );
  }
  const already = current.primaryIdentity === req.primaryIdentity && current.generation === req.generation;
  const state = already
    ? current
    : await ctx.serializer.run(req.vmId, () =>
        ctx.relationships.replacePrimary(caller, { vmId: req.vmId, generation: req.generation, primarySiteId: req.primarySiteId, primaryIdentity: req.primaryIdentity }),
      );
  // The new primary is the site the points went to: forwarding them there again means nothing.
  // Outside the VM's serialized steps: the forwarder may be waiting for one, and stop waits for it.
  if (ext?.target && ctx.extensions) await ctx.extensions.stop(req.vmId, caller);
  return state;
}

export class PlannedFailoverNotRelayedError extends QreplicaError {
  readonly code = "PLANNED_FAILOVER_NOT_RELAYED" as const;
}

/**
 * A planned failover at the third site of an extended replication that the forwarding site could
 * not carry out (the primary's agent is not connected to it, or did not stop the VM in time):
 * nothing was recorded here; what is open is said.
 */
export function plannedFailoverThroughSite(vmId: string, forwardingSiteId: string, cause: unknown): PlannedFailoverNotRelayedError {
  return new PlannedFailoverNotRelayedError(
    `VM ${vmId}: site ${forwardingSiteId}, which forwards its points here, could not complete the planned failover through it (${errorMessage(cause)}); ` +
      `'qreplica status ${vmId}' on ${forwardingSiteId} says why (lastError). Nothing was recorded here. Unless that says the VM is stopped at its primary already, ` +
      `try again once the primary's agent is connected to ${forwardingSiteId}, or fail over with --unplanned`,
    { cause },
  );
}
