import { ENABLE_UNACKNOWLEDGED } from "../../model/trackingLost.js";
import type { RelationshipState } from "./relationshipState.js";

/** A disk whose change tracking the primary reports lost (Hello.tracking_lost). */
export interface TrackingLossReport {
  readonly diskId: string;
  readonly code: string;
}

export type ResyncMode = "automatic" | "manual";

/**
 * An initial replication the primary never saw finish: every disk the agent reports is only
 * missing the ack of its enabling cycle (no crash of QEMU lost anything), and no incremental cycle
 * was ever committed since the initial replication started. The site may hold the initial point
 * (committed, ack lost) and even a resync over it whose ack was lost too; either way, from the
 * primary's side the first replication is still being finished, not a protected VM recovering.
 */
export function continuesInitialReplication(s: RelationshipState, lost: readonly TrackingLossReport[]): boolean {
  return lost.length > 0 && lost.every((l) => l.code === ENABLE_UNACKNOWLEDGED) && !s.incrementalSinceInitial;
}

/**
 * Whether a relationship that needs a resync (resync-required, or a resync that was interrupted)
 * runs it now or waits for an operator. `resync: manual` exists so that an operator decides when a
 * protected VM whose tracking was lost (QEMU or the host crashed, the agent's state was lost) is
 * read and compared in full; it waits for `qreplica resync` (ResyncApproved), which then stands
 * until that resync completes. An interrupted initial replication is not such a case: nobody has
 * decided anything yet, so it goes on by itself, whatever the mode.
 */
export function resyncGoAhead(s: RelationshipState, hello: { lost: readonly TrackingLossReport[]; mode: ResyncMode }): "resync" | "wait" {
  if (hello.mode === "automatic" || s.resyncApproval !== undefined) return "resync";
  return continuesInitialReplication(s, hello.lost) ? "resync" : "wait";
}
