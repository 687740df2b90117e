/**
 * Runs each VM's drills as its policy's `verification.every` says: the first as soon as the VM has
 * a point this site holds as a replica, then `every` after the end of the previous drill (recorded
 * in the ledger, so a site restart keeps the rhythm). A drill that could not start (a merge under
 * way, the site busy with a failover) is tried again a minute later, not at the next `every`.
 */
import { errorMessage } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import type { ReplicationStateName, VmStatus } from "../../ledger/index.js";
import type { VerificationPolicy } from "../../policy/types.js";
import type { DrillService } from "./drillService.js";

/** The site holds the VM's chains as a replica (as retention requires): drills may open its points. */
const DRILLABLE: ReadonlySet<ReplicationStateName> = new Set(["replicating", "paused", "resync-required", "resynchronising"]);

/** After a drill that could not start. */
export const DRILL_RETRY_SECONDS = 60;
export const DRILL_TICK_MS = 10_000;

export interface DrillDueInput {
  verification: VerificationPolicy | undefined;
  status: Pick<VmStatus, "state" | "lastPointId" | "lastDrill"> | undefined;
  running: boolean;
  /** The last time the scheduler tried and the drill did not start (ms). */
  lastRefusedAt: number | undefined;
}

/** Whether a scheduled drill is due now (pure, for tests with an injected clock). */
export function drillDue(i: DrillDueInput, now: number): boolean {
  const v = i.verification;
  const s = i.status;
  if (!v || !s || i.running || !s.lastPointId || !DRILLABLE.has(s.state)) return false;
  if (i.lastRefusedAt !== undefined && now - i.lastRefusedAt < Math.min(v.everySeconds, DRILL_RETRY_SECONDS) * 1000) return false;
  const last = s.lastDrill ? Date.parse(s.lastDrill.finishedAt) : undefined;
  return last === undefined || now - last >= v.everySeconds * 1000;
}

export interface DrillSchedulerDeps {
  drills: DrillService;
  /** Caught up with the ledger, then every VM's status. */
  statuses: () => Promise<VmStatus[]>;
  verificationOf: (vmId: string) => VerificationPolicy | undefined;
  logger: Logger;
  clock?: () => number;
  tickMs?: number;
}

export class DrillScheduler {
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  private readonly refusedAt = new Map<string, number>();

  constructor(private readonly deps: DrillSchedulerDeps) {}

  start(): this {
    this.timer = setInterval(() => void this.tick(), this.deps.tickMs ?? DRILL_TICK_MS);
    this.timer.unref();
    void this.tick();
    return this;
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.ticking;
  }

  /** One pass over every VM; a pass still running is joined, not doubled. */
  tick(): Promise<void> {
    this.ticking ??= this.pass().finally(() => (this.ticking = undefined));
    return this.ticking;
  }

  private async pass(): Promise<void> {
    const now = (this.deps.clock ?? Date.now)();
    let statuses: VmStatus[];
    try {
      statuses = await this.deps.statuses();
    } catch (err) {
      this.deps.logger.error({ err: errorMessage(err) }, "drill scheduler could not read the ledger; retried at the next tick");
      return;
    }
    for (const status of statuses) {
      const vmId = status.vmId;
      const due = drillDue(
        { verification: this.deps.verificationOf(vmId), status, running: this.deps.drills.runningDrill(vmId) !== undefined, lastRefusedAt: this.refusedAt.get(vmId) },
        now,
      );
      if (!due) continue;
      try {
        const d = await this.deps.drills.start(vmId, { trigger: "schedule" });
        this.refusedAt.delete(vmId);
        this.deps.logger.info({ vm: vmId, drillId: d.drillId, point: d.pointId }, "scheduled verification drill started");
        // The result is recorded and logged by the drill itself; done never rejects.
        void d.done;
      } catch (err) {
        this.refusedAt.set(vmId, now);
        this.deps.logger.warn({ vm: vmId, err: errorMessage(err) }, `scheduled verification drill did not start; tried again in ${DRILL_RETRY_SECONDS} s`);
      }
    }
  }
}
