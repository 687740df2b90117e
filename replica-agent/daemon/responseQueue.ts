import type { ClientDuplexStream } from "@grpc/grpc-js";
import type { PlannedFailoverRequested, PolicyChanged, ReplicateResponse } from "../../src/gen/qreplica/v1/replication.js";

/** What an operator told the agent over the open stream (pause, resume, resync). */
export type Notice = Extract<NonNullable<ReplicateResponse["body"]>, { $case: "resyncRequested" | "replicationPaused" | "replicationResumed" }>;
import type { OutgoingReplicateRequest } from "../../src/transport/index.js";

/** Responses of a Replicate stream, awaited one at a time; the stream's end or error fails the waiters. */
export class ResponseQueue {
  private readonly items: ReplicateResponse[] = [];
  private waiter: { resolve(r: ReplicateResponse): void; reject(e: Error): void } | undefined;
  private ended: Error | undefined;
  private markFailed!: (err: Error) => void;
  /**
   * Rejects once the stream has ended or failed. A write racing it cannot hang: grpc-js does not
   * destroy the writable side when the call fails, so a pending 'drain' would never come.
   */
  readonly failed: Promise<never> = new Promise<never>((_resolve, reject) => (this.markFailed = reject));

  private markPlanned!: (r: PlannedFailoverRequested) => void;
  /** Resolves when the replica site asks for a planned failover; unrelated to the request/answer flow. */
  readonly plannedFailover: Promise<PlannedFailoverRequested> = new Promise((resolve) => (this.markPlanned = resolve));

  private readonly notices: Notice[] = [];
  private noticeWaiter: (() => void) | undefined;
  private noticePending: Promise<void> | undefined;

  constructor(
    stream: ClientDuplexStream<OutgoingReplicateRequest, ReplicateResponse>,
    /** A changed effective policy pushed by the site: applied at the next cycle, never a reply to anything. */
    onPolicy: (p: PolicyChanged) => void = () => undefined,
  ) {
    stream.on("data", (r: ReplicateResponse) => {
      if (r.body?.$case === "policyChanged") {
        onPolicy(r.body.value);
        return;
      }
      if (r.body?.$case === "plannedFailoverRequested") {
        this.markPlanned(r.body.value);
        return;
      }
      const body = r.body;
      if (body?.$case === "resyncRequested" || body?.$case === "replicationPaused" || body?.$case === "replicationResumed") {
        this.notices.push(body);
        const w = this.noticeWaiter;
        this.noticeWaiter = undefined;
        this.noticePending = undefined;
        w?.();
        return;
      }
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = undefined;
        w.resolve(r);
      } else {
        this.items.push(r);
      }
    });
    this.failed.catch(() => undefined);
    const end = (err: Error) => {
      this.ended ??= err;
      this.markFailed(this.ended);
      const w = this.waiter;
      this.waiter = undefined;
      w?.reject(this.ended);
    };
    stream.on("error", (err: Error) => end(err));
    stream.on("end", () => end(new Error("the replica site closed the stream")));
  }

  /** The oldest operator notice not yet handled. */
  takeNotice(): Notice | undefined {
    return this.notices.shift();
  }

  /** Resolves once a notice is waiting (at once if one is); never rejects. */
  noticeArrived(): Promise<void> {
    if (this.notices.length > 0) return Promise.resolve();
    // One promise shared by every waiter until a notice comes: waiting in a loop costs nothing.
    this.noticePending ??= new Promise((resolve) => (this.noticeWaiter = resolve));
    return this.noticePending;
  }

  /** A response that arrived already, without waiting (e.g. a rejection while chunks are sent). */
  poll(): ReplicateResponse | undefined {
    return this.items.shift();
  }

  next(timeoutMs: number): Promise<ReplicateResponse> {
    const ready = this.items.shift();
    if (ready) return Promise.resolve(ready);
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`no answer from the replica site within ${timeoutMs} ms`));
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
