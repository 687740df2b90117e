import type { ClientDuplexStream } from "@grpc/grpc-js";
import type { ReplicateResponse } from "../gen/qreplica/v1/replication.js";
import { writeWithBackpressure } from "./backpressure.js";
import type { OutgoingReplicateRequest } from "./replicateWire.js";

export type ReplicateClientStream = ClientDuplexStream<OutgoingReplicateRequest, ReplicateResponse>;

/**
 * The answers on one Replicate stream as its sender sees them (an agent, or a site forwarding
 * its points): replies awaited one at a time, in order; pushes the site sends unasked (a policy,
 * an operator's notice, a planned failover) handed to `push` instead, which returns true for
 * what it took. The stream's end or error fails every wait and `failed`.
 */
export class ReplicateResponses {
  private readonly items: ReplicateResponse[] = [];
  private waiter: { resolve(r: ReplicateResponse): void; reject(e: Error): void } | undefined;
  private ended: Error | undefined;
  /**
   * Rejects once the stream has ended or failed. A write racing it cannot hang: grpc-js does not
   * destroy the writable side when the call fails, so a pending 'drain' would never come.
   */
  readonly failed: Promise<never>;

  constructor(
    stream: ReplicateClientStream,
    /** Who answers, in messages: "the replica site", "the third site". */
    private readonly peer: string,
    push: (r: ReplicateResponse) => boolean = () => false,
  ) {
    let fail!: (e: Error) => void;
    this.failed = new Promise<never>((_, reject) => (fail = reject));
    this.failed.catch(() => undefined);
    stream.on("data", (r: ReplicateResponse) => {
      if (push(r)) return;
      const w = this.waiter;
      this.waiter = undefined;
      if (w) w.resolve(r);
      else this.items.push(r);
    });
    const end = (err: Error) => {
      if (this.ended) return;
      this.ended = err;
      fail(err);
      const w = this.waiter;
      this.waiter = undefined;
      w?.reject(err);
    };
    stream.on("error", (err: Error) => end(err));
    stream.on("end", () => end(new Error(`${peer} closed the Replicate stream`)));
  }

  /** A reply that arrived already, without waiting (e.g. a rejection while chunks are sent). */
  poll(): ReplicateResponse | undefined {
    return this.items.shift();
  }

  next(timeoutMs: number): Promise<ReplicateResponse> {
    const ready = this.items.shift();
    if (ready) return Promise.resolve(ready);
    if (this.ended) return Promise.reject(this.ended);
    // One wait at a time: a newer wait supersedes an abandoned one (a failed cycle's hash pump)
    // instead of both racing for the next reply.
    this.waiter?.reject(new Error(`a newer wait for ${this.peer}'s answer superseded this one`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // Only its own place: a newer wait keeps its replies.
        if (this.waiter === waiter) this.waiter = undefined;
        reject(new Error(`no answer from ${this.peer} within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter: { resolve(r: ReplicateResponse): void; reject(e: Error): void } = {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.waiter = waiter;
    });
  }
}

/** A write that fails as soon as the stream does, instead of waiting for a drain that never comes. */
export function sendOnReplicate(stream: ReplicateClientStream, responses: Pick<ReplicateResponses, "failed">, message: OutgoingReplicateRequest): Promise<void> {
  // A few chunks queued beyond the HTTP/2 window keep the link busy; more only cost memory.
  return Promise.race([writeWithBackpressure(stream, message, { maxUnwritten: 4 }), responses.failed]);
}
