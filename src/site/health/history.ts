/**
 * The recent history health and statistics are computed from: per VM, the committed and failed
 * cycles of the last day and the last test failover, beside the status fold (state, counters).
 * Caught up incrementally from its checkpoint, so an evaluation reads only the events appended
 * since the last one; the memory it holds is bounded by `retainSeconds` per VM.
 */
import type { EventStore, RecordedEvent } from "../../ledger/eventStore.js";
import { RELATIONSHIP_STREAM_PREFIX, decodeRelationshipEvent, vmIdOfStream } from "../../ledger/domain/events.js";
import { StatusProjection, type VmStatus } from "../../ledger/projections/status.js";
import type { CycleRecord } from "./rules.js";

/** The longest window `measure` answers for. */
export const MAX_WINDOW_SECONDS = 24 * 3600;

export interface VmHistory {
  readonly commits: CycleRecord[];
  readonly failures: number[];
  lastTestFailoverAt: number | undefined;
}

/** Told of every cycle as it is folded (the site's counters and histograms). */
export interface CycleListener {
  commit?(vmId: string, c: CycleRecord): void;
  failure?(vmId: string): void;
}

const PAGE = 1000;

export class MonitoringHistory {
  private readonly status = new StatusProjection();
  private readonly vms = new Map<string, VmHistory>();
  private position = 0n;

  constructor(
    private readonly listener: CycleListener = {},
    private readonly retainSeconds = MAX_WINDOW_SECONDS,
  ) {}

  async catchUp(store: EventStore): Promise<void> {
    for (;;) {
      const page = await store.readAll({ fromPosition: this.position, maxCount: PAGE, streamPrefix: RELATIONSHIP_STREAM_PREFIX });
      for (const e of page) this.apply(e);
      if (page.length < PAGE) return;
    }
  }

  apply(recorded: RecordedEvent): void {
    if (recorded.globalPosition <= this.position) return;
    this.status.apply(recorded);
    this.position = recorded.globalPosition;
    const vmId = vmIdOfStream(recorded.stream);
    if (vmId === undefined) return;
    const event = decodeRelationshipEvent(recorded);
    const h = this.vms.get(vmId) ?? { commits: [], failures: [], lastTestFailoverAt: undefined };
    this.vms.set(vmId, h);
    const at = recorded.recordedAt.getTime();
    switch (event.type) {
      case "CycleCommitted": {
        const d = event.data;
        const c: CycleRecord = {
          seq: d.cycleSeq,
          kind: d.kind,
          cutoffAt: Date.parse(d.cutoffAt),
          committedAt: Date.parse(d.committedAt),
          dataBytes: d.dataBytes,
          wireBytes: d.wireBytes,
          durationMs: d.durationMs,
        };
        h.commits.push(c);
        this.listener.commit?.(vmId, c);
        break;
      }
      case "CycleFailed":
        h.failures.push(at);
        this.listener.failure?.(vmId);
        break;
      case "TestFailoverStarted":
        h.lastTestFailoverAt = Date.parse(event.data.startedAt);
        break;
      case "ResyncRequired":
      case "FailoverCompleted":
        // The points before are gone: the gaps to them say nothing of the cycles due now.
        h.commits.length = 0;
        break;
    }
    this.prune(h, at);
  }

  /** Keeps the last day, and always the newest commit (the gap after it is the open interval). */
  private prune(h: VmHistory, now: number): void {
    const from = now - this.retainSeconds * 1000;
    let drop = 0;
    while (drop < h.commits.length - 2 && h.commits[drop + 1]!.cutoffAt < from) drop++;
    if (drop > 0) h.commits.splice(0, drop);
    let f = 0;
    while (f < h.failures.length && h.failures[f]! < from) f++;
    if (f > 0) h.failures.splice(0, f);
  }

  statusOf(vmId: string, now: Date): VmStatus | undefined {
    return this.status.get(vmId, now);
  }

  statuses(now: Date): VmStatus[] {
    return this.status.list(now);
  }

  historyOf(vmId: string): VmHistory {
    return this.vms.get(vmId) ?? { commits: [], failures: [], lastTestFailoverAt: undefined };
  }
}
