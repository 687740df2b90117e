import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireState, requireTime } from "../guards.js";
import type { RelationshipState } from "../relationship.js";

export interface PrepareFailoverInput {
  preparedAt: string;
  /**
   * When the primary VM stopped, on the primary host's clock: the clock that stamps every cycle's
   * cut-off, so "a point cut at or after it" means "a point holding every write of the primary".
   */
  primaryStoppedAt: string;
}

const COMMAND = "prepareFailover";

/**
 * Planned failover, step 1 (Start-VMFailover -Prepare): recorded once the primary VM is shut
 * down. The primary's agent then sends a final incremental cycle, cut after the stop, which
 * commitCycle still accepts in prepared-for-planned-failover. `failover({ kind: "planned" })`
 * refuses until that final cycle is committed, which is what makes it lose no data.
 *
 * Only from replicating: a planned failover needs replication in sync and flowing. From paused or
 * resync-required, resume or resynchronise first, or fail over unplanned. Test failovers keep
 * running. `cancelFailover` returns to replicating (the primary VM is started again).
 */
export function prepareFailover(s: RelationshipState, input: PrepareFailoverInput): RelationshipEvent[] {
  const preparedAt = requireTime(COMMAND, "preparedAt", input.preparedAt);
  const primaryStoppedAt = requireTime(COMMAND, "primaryStoppedAt", input.primaryStoppedAt);
  requireState(s, COMMAND, ["replicating"], hintFor(s));
  return [relationshipEvent("FailoverPrepared", { cycleSeq: s.lastCycleSeq, preparedAt, primaryStoppedAt })];
}

function hintFor(s: RelationshipState): string | undefined {
  switch (s.state) {
    case "paused":
      return "A planned failover needs the primary's final cycle: resume replication first, or fail over unplanned.";
    case "resync-required":
    case "resynchronising":
      return "A planned failover needs replication in sync: let the resynchronisation complete first, or fail over unplanned.";
    case "prepared-for-planned-failover":
      return `A planned failover of VM ${s.vmId} is already prepared: fail over, or cancel it.`;
    default:
      return undefined;
  }
}
