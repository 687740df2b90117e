import type { EffectivePolicy, FailoverCancelledNotice, PlannedFailoverRequested, ReplicateResponse } from "../../gen/qreplica/v1/replication.js";
import { ReplicateResponses, sendOnReplicate, type OutgoingReplicateRequest, type ReplicateClientStream } from "../../transport/index.js";

export type ForwardStream = ReplicateClientStream;

/**
 * The third site's answers on one Replicate stream, in order (ReplicateResponses, as an agent
 * has them), with the pushes a forwarder acts on routed to its hooks.
 */
export class Responses extends ReplicateResponses {
  /**
   * `onPlannedFailover`: the third site asked for a planned failover (the forwarder has the
   * primary's agent stop the VM, see plannedFailoverRelay.ts); `onPolicy`: the third site's policy for the VM changed (its frequency bounds forwarding);
   * `onResyncRequested`: an operator there asked for a resync; `onFailoverCancelled`: the planned
   * failover this stream relayed was cancelled there (the forwarder lifts the primary's fence).
   */
  constructor(
    stream: ForwardStream,
    hooks: {
      onPlannedFailover?: (req: PlannedFailoverRequested) => void;
      onPolicy?: (p: EffectivePolicy | undefined) => void;
      onResyncRequested?: () => void;
      onFailoverCancelled?: (notice: FailoverCancelledNotice) => void;
    } = {},
  ) {
    super(stream, "the third site", (r: ReplicateResponse) => {
      const body = r.body;
      if (body?.$case === "policyChanged") hooks.onPolicy?.(body.value.policy);
      // An operator's resync at the third site: the next forward compares (onResyncRequested).
      else if (body?.$case === "resyncRequested") hooks.onResyncRequested?.();
      else if (body?.$case === "plannedFailoverRequested") hooks.onPlannedFailover?.(body.value);
      else if (body?.$case === "failoverCancelled") hooks.onFailoverCancelled?.(body.value);
      // Pauses are the third site's to enforce (it refuses cycles); the forwarder has nothing to stop.
      else if (body?.$case !== "replicationPaused" && body?.$case !== "replicationResumed") return false;
      return true;
    });
  }
}

/** A write that fails as soon as the stream does, instead of waiting for a drain that never comes. */
export function send(stream: ForwardStream, responses: Responses, message: OutgoingReplicateRequest): Promise<void> {
  return sendOnReplicate(stream, responses, message);
}
