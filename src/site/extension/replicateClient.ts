import type { ClientDuplexStream } from "@grpc/grpc-js";
import type { EffectivePolicy, ReplicateResponse } from "../../gen/qreplica/v1/replication.js";
import { writeWithBackpressure, type OutgoingReplicateRequest } from "../../transport/index.js";

export type ForwardStream = ClientDuplexStream<OutgoingReplicateRequest, ReplicateResponse>;

/**
 * The third site's answers on one Replicate stream, in order; a broken stream fails every wait.
 * (The agent's ResponseQueue does the same for a primary; site code may not import the agent.)
 */
export class Responses {
  private readonly items: ReplicateResponse[] = [];
  private waiter: { resolve(r: ReplicateResponse): void; reject(e: Error): void } | undefined;
  private ended: Error | undefined;
  /** Rejects once the stream fails or ends. */
  readonly failed: Promise<never>;

  /**
   * `onPlannedFailover`: the third site asked for a planned failover (the forwarder has the
   * primary's agent stop the VM, see plannedFailoverRelay.ts); `onPolicy`: the third site's policy for the VM changed (its frequency bounds forwarding);
   * `onResyncRequested`: an operator there asked for a resync.
   */
  constructor(
    stream: ForwardStream,
    hooks: { onPlannedFailover?: (powerdownTimeoutSeconds: number) => void; onPolicy?: (p: EffectivePolicy | undefined) => void; onResyncRequested?: () => void } = {},
  ) {
    let fail!: (e: Error) => void;
    this.failed = new Promise<never>((_, reject) => (fail = reject));
    this.failed.catch(() => undefined);
    stream.on("data", (r: ReplicateResponse) => {
      // Pushes a forwarder has no use for (its policy and notices are B's to follow, not C's).
      if (r.body?.$case === "policyChanged") return hooks.onPolicy?.(r.body.value.policy);
      // An operator's resync at the third site: the next forward compares (onResyncRequested).
      if (r.body?.$case === "resyncRequested") return hooks.onResyncRequested?.();
      if (r.body?.$case === "replicationPaused" || r.body?.$case === "replicationResumed") return;
      if (r.body?.$case === "plannedFailoverRequested") return hooks.onPlannedFailover?.(r.body.value.powerdownTimeoutSeconds);
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = undefined;
        w.resolve(r);
      } else this.items.push(r);
    });
    const end = (err: Error) => {
      if (this.ended) return;
      this.ended = err;
      fail(err);
      this.waiter?.reject(err);
      this.waiter = undefined;
    };
    stream.on("error", (err: Error) => end(err));
    stream.on("end", () => end(new Error("the third site ended the Replicate stream")));
  }

  /** An answer already received, without waiting. */
  poll(): ReplicateResponse | undefined {
    return this.items.shift();
  }

  next(timeoutMs: number): Promise<ReplicateResponse> {
    const queued = this.items.shift();
    if (queued) return Promise.resolve(queued);
    if (this.ended) return Promise.reject(this.ended);
    return new Promise<ReplicateResponse>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`the third site did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }
}

/** A write that fails as soon as the stream does, instead of waiting for a drain that never comes. */
export function send(stream: ForwardStream, responses: Responses, message: OutgoingReplicateRequest): Promise<void> {
  return Promise.race([writeWithBackpressure(stream, message, { maxUnwritten: 4 }), responses.failed]);
}
