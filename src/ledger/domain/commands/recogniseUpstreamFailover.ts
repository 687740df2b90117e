import { StaleGenerationError, UpstreamFailoverRefusedError } from "../errors.js";
import { relationshipEvent, type RelationshipEvent } from "../events.js";
import { requireCount, requireEnabled, requireText } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import { REPLICATION_STATES, type ReplicationStateName } from "../states.js";

export interface RecogniseUpstreamFailoverInput {
  /** The generation the peer's Hello presented. */
  presentedGeneration: number;
  /** Certificate subject CN of the peer. */
  peerIdentity: string;
  /** Hello.upstream_failover: the failover upstream as the peer describes it. */
  reason: string;
}

const COMMAND = "recogniseUpstreamFailover";

/** States in which this site is a replica receiving from the primary (a resync keeps every point). */
const RECEIVING: readonly ReplicationStateName[] = ["replicating", "paused", "resync-required", "resynchronising"];

/**
 * An extended replica (A -> B -> C, this is C) learns of a failover at its primary site B through
 * the generation: B's agent, replicating the failover VM here, presents a generation above this
 * relationship's and says why (Hello.upstream_failover). The rule, all of it required:
 *
 * - the peer is the identity this relationship already accepts as its primary (B's site
 *   certificate): no other identity can move the generation, whatever it claims;
 * - the presented generation is above the current one (equal: already recognised, no events,
 *   unless the current one is a cancelled failover's here that the peer never adopted: see
 *   failoverOverCancelledOne; below: stale, as any old generation);
 * - the relationship receives from that primary: replicating, paused, resync-required or
 *   resynchronising, with points to resync against, and no failover prepared, under way or done
 *   here (this site would be the VM's primary then).
 *
 * A paused relationship stays paused (the operator's pause stands); its resume then asks for the
 * resync instead of incremental cycles.
 *
 * PrimaryFailedOverUpstream then moves the generation, which fences every older one (a forwarder
 * of B still presenting it is refused as stale), and asks for a resync: the new agent has no change
 * tracking relative to this site's newest point, so it compares; every point here is kept.
 */
export function recogniseUpstreamFailover(s: RelationshipState, input: RecogniseUpstreamFailoverInput): RelationshipEvent[] {
  const presentedGeneration = requireCount(COMMAND, "presentedGeneration", input.presentedGeneration, 1);
  const peerIdentity = requireText(COMMAND, "peerIdentity", input.peerIdentity);
  const reason = requireText(COMMAND, "reason", input.reason).slice(0, 500);
  requireEnabled(
    s,
    COMMAND,
    REPLICATION_STATES.filter((x) => x !== "not-enabled"),
  );
  const overCancelled = failoverOverCancelledOne(s, input);
  if (presentedGeneration === s.generation && !overCancelled) return [];
  if (presentedGeneration < s.generation) throw new StaleGenerationError(s.vmId, presentedGeneration, s.generation);
  if (peerIdentity !== s.primaryIdentity) {
    throw new UpstreamFailoverRefusedError(
      s.vmId,
      `'${peerIdentity}' declared a failover upstream (generation ${presentedGeneration}), but this site replicates the VM from '${s.primaryIdentity}': only that primary can move the generation`,
    );
  }
  if (s.failover !== undefined || !RECEIVING.includes(s.state)) {
    const why =
      s.failover !== undefined || s.state === "failed-over"
        ? "the VM is failed over at this site (it is the VM's primary here): a failover upstream no longer moves it; cancel the failover here first, or protect the VM from this site"
        : `the relationship is ${s.state}, with no points to resynchronise against: let the initial replication finish first`;
    throw new UpstreamFailoverRefusedError(s.vmId, `a failover upstream (generation ${presentedGeneration} from '${peerIdentity}') is refused: ${why}`);
  }
  if (s.points.length === 0) {
    throw new UpstreamFailoverRefusedError(s.vmId, `a failover upstream (generation ${presentedGeneration}) is refused: this site holds no point to resynchronise against`);
  }
  // Above the cancelled failover's generation too: the peer is told it in the HelloAck and adopts it.
  const generation = overCancelled ? s.generation + 1 : presentedGeneration;
  return [relationshipEvent("PrimaryFailedOverUpstream", { peerIdentity, previousGeneration: s.generation, generation, reason })];
}

/**
 * A failover upstream declared at this site's own generation, which a failover here made and its
 * cancel handed over to the peer (the handover still open: no cycle committed since, so the peer
 * never adopted it, e.g. the forwarding site's forwarder never came back before the VM failed over
 * there). The peer counted one up from the generation it knew and so landed on the cancelled
 * failover's: a new failover all the same, which is recorded one generation above (fencing the
 * cancelled one's and every older one). The same declaration again (its reason already recorded:
 * the same agent, that adopted a generation handed over to it since) is no new failover.
 */
export function failoverOverCancelledOne(s: RelationshipState, input: { presentedGeneration: number; peerIdentity: string; reason: string }): boolean {
  const h = s.generationHandover;
  return (
    input.presentedGeneration === s.generation &&
    h !== undefined &&
    h.peerIdentity === input.peerIdentity &&
    h.fromGeneration < s.generation &&
    s.upstreamFailover?.reason !== input.reason.slice(0, 500)
  );
}
