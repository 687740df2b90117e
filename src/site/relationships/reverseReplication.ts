import { enableReplication, replacePrimary, type JsonObject, type RelationshipState } from "../../ledger/index.js";
import { imageInfo } from "../../qemu/processes/index.js";
import { actorMetadata, type Caller } from "../controlPlane/caller.js";
import type { RelationshipDeps } from "./relationshipDeps.js";

/** A reverse replication to prepare here: the new primary, its generation, the VM's disks and their seeds. */
export interface ReverseInput {
  vmId: string;
  generation: number;
  primarySiteId: string;
  primaryIdentity: string;
  disks: Array<{ diskId: string; sizeBytes: number }>;
  seeds: Array<{ diskId: string; imagePath: string }>;
  vmSpec?: JsonObject;
}

/** The site this one forwarded the VM to, as its new primary. */
export interface ReplacePrimaryInput {
  vmId: string;
  generation: number;
  primarySiteId: string;
  primaryIdentity: string;
}

/**
 * Reverse replication, on the old primary's site: the VM's new primary replicates here at the
 * generation of the failover, onto the old disks (seeds) so that only differing chunks travel.
 */
export async function prepareReverse(deps: RelationshipDeps, caller: Caller, input: ReverseInput): Promise<RelationshipState> {
  for (const seed of input.seeds) await deps.storage.checkSeed(seed.diskId, seed.imagePath);
  const current = await deps.load(input.vmId);
  if (current.state === "ready-for-initial-replication" && current.generation === input.generation && current.primaryIdentity === input.primaryIdentity) {
    // Already prepared by an earlier 'qreplica reverse' that failed later on: run it again.
    deps.storage.saveSeeds(input.vmId, input.seeds);
    return current;
  }
  deps.storage.saveSeeds(input.vmId, input.seeds);
  // After a completed failover the new primary lists no points; the seeds tell the disk sizes.
  const disks = input.disks.length
    ? input.disks
    : await Promise.all(input.seeds.map(async (s) => ({ diskId: s.diskId, sizeBytes: (await imageInfo(s.imagePath))["virtual-size"] })));
  return (
    await deps.exec(
      input.vmId,
      (s) =>
        enableReplication(s, {
          primarySiteId: input.primarySiteId,
          replicaSiteId: deps.site.siteId,
          primaryIdentity: input.primaryIdentity,
          disks,
          vmSpec: input.vmSpec,
          retention: { maxPoints: deps.site.defaultMaxPoints },
          generation: input.generation,
        }),
      { metadata: actorMetadata(caller) },
    )
  ).newState;
}

/**
 * Reverse replication from the site this one forwarded the VM to (extended replication): that
 * site becomes the primary at its failover's generation, the points stay (see replacePrimary).
 */
export async function replacePrimaryWith(deps: RelationshipDeps, caller: Caller, input: ReplacePrimaryInput): Promise<RelationshipState> {
  const { newState } = await deps.exec(
    input.vmId,
    (s) =>
      replacePrimary(s, {
        primarySiteId: input.primarySiteId,
        primaryIdentity: input.primaryIdentity,
        generation: input.generation,
        approvedBy: caller.identity,
        approvedByRole: caller.role,
      }),
    { metadata: actorMetadata(caller) },
  );
  deps.logger.info(
    { vm: input.vmId, primary: input.primarySiteId, generation: newState.generation },
    "the VM's primary is now the site it failed over to; its first cycle is a resync against the newest point",
  );
  return newState;
}
