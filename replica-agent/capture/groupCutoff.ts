import type { Logger } from "../../src/common/logger.js";
import type { QmpClient } from "../../src/qemu/qmp/index.js";
import { resumeVcpus, type PauseMarker } from "./vcpuPause.js";

/** What a member's cut-off learns of the group cut it was part of. */
export interface GroupCut {
  groupId: string;
  /** One id per group cut-off, the same in every member's cycle: the site's group point id. */
  cutoffId: string;
  /** The group's members as configured (a point of the cut exists for each that joined and commits). */
  members: string[];
  /** The members that joined this cut (fewer than `members` when some did not arrive in time). */
  joined: string[];
  /** First `stop` sent to last `cont` answered: how long any guest of the group was paused; undefined when none ran. */
  groupPauseMs: number | undefined;
}

export interface GroupPaused<T> {
  result: T;
  /** This VM's own stop-to-cont time; undefined when it was not running. */
  pausedMs: number | undefined;
  group: GroupCut;
}

interface Arrival {
  vmId: string;
  qmp: QmpClient;
  marker: PauseMarker;
  logger: Logger;
  /** The guest ran when the member joined (an operator's pause is left alone). */
  running: boolean;
  fn: () => Promise<unknown>;
  settle: (r: { ok: true; value: GroupPaused<unknown> } | { ok: false; err: unknown }) => void;
}

/** Deadline of `stop` on each member, as each step of a cut-off has (cutoff.ts). */
const STEP_TIMEOUT_MS = 10_000;

/** Default wait for the other members once the first one is ready to cut. */
export const DEFAULT_GROUP_JOIN_TIMEOUT_MS = 2_000;

/**
 * One cut-off for several VMs of this agent (a consistency group). Each member's cut-off joins
 * the group's next round instead of pausing its own guest; when every member has joined (or the
 * join timeout passed), all their vCPUs are stopped at once (`stop` on each monitor in parallel),
 * each member's cut (copy-before-write filter, bitmap transaction) runs while all are stopped, and
 * all are resumed. No guest of the group runs while any member is cut, so the members' points
 * share one instant: a write acknowledged to one guest before the cut and then sent to another
 * is in both points or in neither.
 *
 * A member that does not arrive in time (still in an initial replication, waiting for an
 * operator) is not waited for beyond the timeout: the round cuts the members present, and its
 * id then names fewer than all members, so the site records no group point for it.
 */
export class GroupCutoff {
  private static readonly registry = new Map<string, GroupCutoff>();
  private round: Arrival[] = [];
  private timer: NodeJS.Timeout | undefined;
  private lastIdMs = 0;

  private constructor(
    readonly groupId: string,
    private members: string[],
    private joinTimeoutMs: number,
  ) {}

  /** The process-wide coordinator of a group (members and timeout as the latest config says). */
  static for(groupId: string, members: readonly string[], joinTimeoutMs = DEFAULT_GROUP_JOIN_TIMEOUT_MS): GroupCutoff {
    let g = GroupCutoff.registry.get(groupId);
    if (!g) {
      g = new GroupCutoff(groupId, [...members], joinTimeoutMs);
      GroupCutoff.registry.set(groupId, g);
    } else {
      g.members = [...members];
      g.joinTimeoutMs = joinTimeoutMs;
    }
    return g;
  }

  /** Runs `fn` (one member's cut) inside the group's next common pause. */
  async join<T>(vmId: string, qmp: QmpClient, marker: PauseMarker, logger: Logger, fn: () => Promise<T>): Promise<GroupPaused<T>> {
    // Asked before the round: the common pause holds only `stop`, the cuts and `cont`.
    const running = await isRunning(qmp);
    return new Promise<GroupPaused<T>>((resolve, reject) => {
      const arrival: Arrival = {
        vmId,
        qmp,
        marker,
        logger,
        running,
        fn,
        settle: (r) => (r.ok ? resolve(r.value as GroupPaused<T>) : reject(r.err)),
      };
      // A member's earlier arrival still waiting (cannot happen with one cycle at a time): replaced.
      this.round = [...this.round.filter((a) => a.vmId !== vmId), arrival];
      if (this.members.every((m) => this.round.some((a) => a.vmId === m))) {
        this.fire();
      } else if (this.round.length === 1) {
        this.timer = setTimeout(() => this.fire(), this.joinTimeoutMs);
      }
    });
  }

  private fire(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const arrivals = this.round;
    this.round = [];
    if (arrivals.length === 0) return;
    void this.cut(arrivals);
  }

  /** Sortable and unique per group (a later cut has a later id, even within one millisecond); a valid point id. */
  private nextCutoffId(): string {
    const ms = Math.max(Date.now(), this.lastIdMs + 1);
    this.lastIdMs = ms;
    return new Date(ms).toISOString().replace(/[-:.]/g, "");
  }

  private async cut(arrivals: Arrival[]): Promise<void> {
    const cutoffId = this.nextCutoffId();
    const joined = arrivals.map((a) => a.vmId);
    if (joined.length < this.members.length) {
      arrivals[0]?.logger.warn(
        { group: this.groupId, cutoffId, joined, missing: this.members.filter((m) => !joined.includes(m)) },
        "group cut-off without every member (the others did not reach their cut-off in time): no group point for this cut",
      );
    }
    // Persisted before any `stop` (an agent that dies in the pause resumes its guests at its next start).
    for (const a of arrivals) if (a.running) a.marker.set();
    const startedAt = process.hrtime.bigint();
    const stops = await Promise.all(arrivals.map((a) => stopIfRunning(a)));
    const results = await Promise.allSettled(arrivals.map((a, i) => (stops[i]!.ok ? a.fn() : Promise.reject(stops[i]!.err))));
    const resumed = await Promise.all(
      arrivals.map(async (a, i) => {
        const s = stops[i]!;
        if (!s.ok) {
          // A `stop` that failed (timed out, say) may still have taken effect: the guest ran before, so it runs again.
          await resumeVcpus(a.qmp, a.logger).catch((err: unknown) => a.logger.warn({ vm: a.vmId, err }, "could not resume after a failed stop"));
          return { ok: true as const, pausedMs: undefined };
        }
        if (s.stoppedAt === undefined) return { ok: true as const, pausedMs: undefined };
        try {
          await resumeVcpus(a.qmp, a.logger);
          return { ok: true as const, pausedMs: Number(process.hrtime.bigint() - s.stoppedAt) / 1e6 };
        } catch (err) {
          return { ok: false as const, err };
        }
      }),
    );
    const anyPaused = stops.some((s) => s.ok && s.stoppedAt !== undefined);
    const groupPauseMs = anyPaused ? Number(process.hrtime.bigint() - startedAt) / 1e6 : undefined;
    // After the measurement (file writes): a guest whose `cont` failed stays marked, so the next start resumes it.
    arrivals.forEach((a, i) => {
      const s = stops[i]!;
      if (s.ok && s.stoppedAt !== undefined && resumed[i]!.ok) a.marker.clear();
    });
    const group: GroupCut = { groupId: this.groupId, cutoffId, members: [...this.members], joined, groupPauseMs };
    arrivals.forEach((a, i) => {
      const r = results[i]!;
      const c = resumed[i]!;
      if (r.status === "rejected") a.settle({ ok: false, err: r.reason });
      else if (!c.ok) a.settle({ ok: false, err: c.err });
      else a.settle({ ok: true, value: { result: r.value, pausedMs: c.pausedMs, group } });
    });
  }
}

async function isRunning(qmp: QmpClient): Promise<boolean> {
  try {
    return (await qmp.execute<{ running: boolean }>("query-status")).running;
  } catch {
    // qemu-storage-daemon has no vCPUs (and no query-status): nothing to pause.
    return false;
  }
}

/** `stop` when the guest ran at its join; a VM that was not running (or has no vCPUs) is cut as it is. */
async function stopIfRunning(a: Arrival): Promise<{ ok: true; stoppedAt: bigint | undefined } | { ok: false; err: unknown }> {
  if (!a.running) return { ok: true, stoppedAt: undefined };
  try {
    await a.qmp.execute("stop", undefined, { timeoutMs: STEP_TIMEOUT_MS });
    return { ok: true, stoppedAt: process.hrtime.bigint() };
  } catch (err) {
    a.marker.clear();
    return { ok: false, err };
  }
}
