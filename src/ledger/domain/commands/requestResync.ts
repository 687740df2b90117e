import type { RelationshipEvent } from "../events.js";
import { evolve, type RelationshipState } from "../relationship.js";
import { approveResync, type ApproveResyncInput } from "./approveResync.js";
import { markResyncRequired } from "./markResyncRequired.js";

const IN_SYNC: readonly string[] = ["replicating", "paused"];

/**
 * `qreplica resync VM` as one decision: a replicating or paused VM is first marked
 * resync-required (on demand, with the operator as the reason), then the go-ahead is recorded.
 * Both events are appended together, so no resync-required VM is left without the go-ahead its
 * operator gave. Everything else is approveResync's to allow or refuse.
 */
export function requestResync(s: RelationshipState, input: ApproveResyncInput): RelationshipEvent[] {
  const marked = IN_SYNC.includes(s.state) ? markResyncRequired(s, { reason: `requested by ${input.approvedBy}` }) : [];
  return [...marked, ...approveResync(marked.reduce(evolve, s), input)];
}
