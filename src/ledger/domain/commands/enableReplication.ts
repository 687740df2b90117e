import { InvalidCommandInputError } from "../errors.js";
import { relationshipEvent, type DiskSpec, type JsonObject, type RelationshipEvent } from "../events.js";
import { requireCount, requireState, requireText, requireUniqueDiskIds } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface EnableReplicationInput {
  primarySiteId: string;
  replicaSiteId: string;
  /** Certificate subject CN of the primary's agent. */
  primaryIdentity: string;
  disks: DiskSpec[];
  vmSpec?: JsonObject;
  /** Recovery points kept, including the latest (Hyper-V's "additional points" + 1). */
  retention: { maxPoints: number };
  /** Defaults to 1; only a relationship re-created from another ledger starts higher. */
  generation?: number;
}

const COMMAND = "enableReplication";

export function enableReplication(s: RelationshipState, input: EnableReplicationInput): RelationshipEvent[] {
  const primarySiteId = requireText(COMMAND, "primarySiteId", input.primarySiteId);
  const replicaSiteId = requireText(COMMAND, "replicaSiteId", input.replicaSiteId);
  if (primarySiteId === replicaSiteId) {
    throw new InvalidCommandInputError(`${COMMAND}: VM ${s.vmId} cannot replicate to its own site ${primarySiteId}`);
  }
  if (!Array.isArray(input.disks) || input.disks.length === 0) {
    throw new InvalidCommandInputError(`${COMMAND}: VM ${s.vmId} needs at least one disk to replicate`);
  }
  const disks = input.disks.map((d, i) => ({
    diskId: requireText(COMMAND, `disks[${i}].diskId`, d?.diskId),
    sizeBytes: requireCount(COMMAND, `disks[${i}].sizeBytes`, d?.sizeBytes),
  }));
  requireUniqueDiskIds(
    COMMAND,
    disks.map((d) => d.diskId),
  );
  const vmSpec = input.vmSpec ?? {};
  if (typeof vmSpec !== "object" || vmSpec === null || Array.isArray(vmSpec)) {
    throw new InvalidCommandInputError(`${COMMAND}: vmSpec must be a JSON object`);
  }
  requireState(s, COMMAND, ["not-enabled"], `Replication is already enabled for VM ${s.vmId}; nothing to do.`);
  return [
    relationshipEvent("ReplicationEnabled", {
      vmId: s.vmId,
      primarySiteId,
      replicaSiteId,
      primaryIdentity: requireText(COMMAND, "primaryIdentity", input.primaryIdentity),
      disks,
      vmSpec,
      retention: { maxPoints: requireCount(COMMAND, "retention.maxPoints", input.retention?.maxPoints, 1) },
      generation: requireCount(COMMAND, "generation", input.generation ?? 1, 1),
    }),
  ];
}
