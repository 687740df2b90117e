import { NoSuspectPointError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface ClearSuspectPointsInput {
  /** One point; absent: every suspect point of the VM. */
  pointId?: string;
  /** The operator's certificate identity (also the event's `actor` metadata). */
  clearedBy: string;
  clearedByRole: string;
}

const COMMAND = "clearSuspectPoints";

/**
 * An operator's verdict that suspect points are not an attack (e.g. a database that started
 * storing compressed blobs): the health warning ends and retention no longer holds the last clean
 * point for them. Allowed in every state: a false alarm may be cleared after a failover too.
 * Nothing to clear is refused, so a typo does not pass silently.
 */
export function clearSuspectPoints(s: RelationshipState, input: ClearSuspectPointsInput): RelationshipEvent[] {
  const clearedBy = requireText(COMMAND, "clearedBy", input.clearedBy);
  const clearedByRole = requireText(COMMAND, "clearedByRole", input.clearedByRole);
  const pointId = input.pointId === undefined || input.pointId === "" ? undefined : requireText(COMMAND, "pointId", input.pointId);
  const suspect = s.suspectPoints.map((p) => p.pointId);
  const pointIds = pointId === undefined ? suspect : suspect.filter((id) => id === pointId);
  if (pointIds.length === 0) throw new NoSuspectPointError(s.vmId, pointId, suspect);
  return [relationshipEvent("SuspectPointsCleared", { pointIds, clearedBy, clearedByRole })];
}
