import { InvalidCommandInputError, NoSuchMergeError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireEnabled, requireText, requireUniqueDiskIds } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import { REPLICATION_STATES } from "../states.js";

export interface CompleteMergeInput {
  pointId: string;
  /** Per disk, the base image that now holds the surviving point's data. */
  disks: { diskId: string; imagePath: string }[];
}

const COMMAND = "completeMerge";

/**
 * Accepted in every enabled state: the images were already rewritten on disk, and the ledger
 * must say so whatever happened to the relationship meanwhile (e.g. after a crash and restart).
 */
export function completeMerge(s: RelationshipState, input: CompleteMergeInput): RelationshipEvent[] {
  const pointId = requireText(COMMAND, "pointId", input.pointId);
  requireEnabled(
    s,
    COMMAND,
    REPLICATION_STATES.filter((x) => x !== "not-enabled"),
  );
  const index = s.points.findIndex((p) => p.pointId === pointId && p.merging);
  const into = s.points[index + 1];
  if (index < 0 || !into) throw new NoSuchMergeError(s.vmId, pointId);
  if (!Array.isArray(input.disks)) throw new InvalidCommandInputError(`${COMMAND}: disks must be an array`);
  const disks = input.disks.map((d, i) => ({
    diskId: requireText(COMMAND, `disks[${i}].diskId`, d?.diskId),
    imagePath: requireText(COMMAND, `disks[${i}].imagePath`, d?.imagePath),
  }));
  requireUniqueDiskIds(
    COMMAND,
    disks.map((d) => d.diskId),
  );
  const expected = into.disks
    .map((d) => d.diskId)
    .sort()
    .join(", ");
  const got = disks
    .map((d) => d.diskId)
    .sort()
    .join(", ");
  if (expected !== got) {
    throw new InvalidCommandInputError(`${COMMAND}: point ${into.pointId} of VM ${s.vmId} has disks [${expected}] but the merge reports [${got}]`);
  }
  return [relationshipEvent("RecoveryPointMerged", { pointId, intoPointId: into.pointId, disks })];
}
