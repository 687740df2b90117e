import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireCount, requireEnabled, requireGeneration, requireNextCycle, requireState, requireTime } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface StartResyncInput {
  /** The resync cycle's sequence; its commit (kind "resync") must carry the same one. */
  cycleSeq: number;
  cutoffAt: string;
  generation: number;
}

const COMMAND = "startResync";

/**
 * Resynchronisation by comparison writes one more point on top of the chain. Unlike Hyper-V,
 * the existing points are kept: they were correct at their cut-offs; only change tracking was lost.
 */
export function startResync(s: RelationshipState, input: StartResyncInput): RelationshipEvent[] {
  const cycleSeq = requireCount(COMMAND, "cycleSeq", input.cycleSeq, 1);
  const cutoffAt = requireTime(COMMAND, "cutoffAt", input.cutoffAt);
  const generation = requireCount(COMMAND, "generation", input.generation, 1);
  const allowed = ["resync-required"] as const;
  requireEnabled(s, COMMAND, allowed);
  requireGeneration(s, generation);
  requireState(s, COMMAND, allowed, s.state === "replicating" ? `VM ${s.vmId} is in sync; mark it resync-required first if its change tracking was lost.` : undefined);
  requireNextCycle(s, cycleSeq);
  return [relationshipEvent("ResyncStarted", { cycleSeq, cutoffAt })];
}

/**
 * The metadata of the ResyncStarted an operator's go-ahead leads to: that operator. Pass it to
 * executeCommand as a function so it is read from the state startResync decides on, never from a
 * state read earlier (an approval landing in between would leave the resync without its actor).
 */
export function resyncStartedMetadata(s: RelationshipState): { actor: string; actorRole: string } | undefined {
  const a = s.resyncApproval;
  return a ? { actor: a.approvedBy, actorRole: a.approvedByRole } : undefined;
}
