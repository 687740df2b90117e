import type { ClientDuplexStream } from "@grpc/grpc-js";
import type { PlannedFailoverRequested, PolicyChanged, ReplicateResponse } from "../../src/gen/qreplica/v1/replication.js";
import { ReplicateResponses, type OutgoingReplicateRequest } from "../../src/transport/index.js";

/** What an operator told the agent over the open stream (pause, resume, resync). */
export type Notice = Extract<NonNullable<ReplicateResponse["body"]>, { $case: "resyncRequested" | "replicationPaused" | "replicationResumed" }>;

/**
 * The replica site's answers on the agent's Replicate stream (ReplicateResponses), with what the
 * site pushes unasked routed here: a changed policy, an operator's notices, a planned failover.
 */
export class ResponseQueue {
  private readonly replies: ReplicateResponses;
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
    this.replies = new ReplicateResponses(stream, "the replica site", (r) => {
      const body = r.body;
      if (body?.$case === "policyChanged") onPolicy(body.value);
      else if (body?.$case === "plannedFailoverRequested") this.markPlanned(body.value);
      else if (body?.$case === "resyncRequested" || body?.$case === "replicationPaused" || body?.$case === "replicationResumed") this.noticeCame(body);
      else return false;
      return true;
    });
  }

  /** Rejects once the stream has ended or failed (see ReplicateResponses.failed). */
  get failed(): Promise<never> {
    return this.replies.failed;
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
    return this.replies.poll();
  }

  next(timeoutMs: number): Promise<ReplicateResponse> {
    return this.replies.next(timeoutMs);
  }

  private noticeCame(notice: Notice): void {
    this.notices.push(notice);
    const w = this.noticeWaiter;
    this.noticeWaiter = undefined;
    this.noticePending = undefined;
    w?.();
  }
}
