import * as grpc from "@grpc/grpc-js";
import type { ControlServiceClient, RecoveryPoint, RelationshipStatus } from "../gen/qreplica/v1/control.js";
import { CycleKind } from "../gen/qreplica/v1/common.js";
import { ControlCallError, unary } from "./siteClient.js";
import { kindName, stateName } from "./jsonView.js";
import type { CycleSample, ProgressReporter } from "./progress.js";

/** How often the site is asked (one GetStatus of one VM: an in-memory read there). */
export const POLL_MS = 500;

export interface WatchOptions {
  client: ControlServiceClient;
  vm: string;
  reporter: ProgressReporter;
  /** Each answer (undefined: the site has no relationship for the VM yet): true ends the watch. Throw to fail it. */
  until: (rel: RelationshipStatus | undefined) => boolean;
  /** Deadline of the whole watch (ms since the epoch); none when absent. */
  deadline?: number;
  everyMs?: number;
}

/** A point the watch did not see in flight (it came and went between two polls): what it covered. */
function sampleOfPoint(vm: string, p: RecoveryPoint): CycleSample {
  const sizes = p.disks.reduce((n, d) => n + Number(d.virtualSizeBytes), 0);
  const total = p.kind === CycleKind.CYCLE_KIND_INCREMENTAL ? Number(p.changedBytes) : sizes;
  return { vm, kind: kindName(p.kind), cycleSequence: Number(p.sequence), bytesDone: total, bytesTotal: total };
}

async function statusOf(client: ControlServiceClient, vm: string): Promise<RelationshipStatus | undefined> {
  try {
    return (await unary(client, client.getStatus, { vmId: vm })).relationships[0];
  } catch (err) {
    if (err instanceof ControlCallError && err.grpcCode === grpc.status.NOT_FOUND) return undefined;
    throw err;
  }
}

export class WatchTimeoutError extends Error {
  readonly code = "WAIT_TIMEOUT" as const;
}

/**
 * Follows a VM's cycles on its replica site until `until` says so: each cycle's bytes as they
 * arrive, its commit (with the total it covered), or its end without a point, and each state
 * change as a phase. Resolves with the last status seen.
 */
export async function watchCycles(o: WatchOptions): Promise<RelationshipStatus | undefined> {
  const every = o.everyMs ?? POLL_MS;
  let current: (CycleSample & { startedAt: number }) | undefined;
  let reportedSeq: number | undefined;
  let lastState: string | undefined;
  for (;;) {
    const rel = await statusOf(o.client, o.vm);
    // Points committed since the watch began: the first answer sets the baseline.
    if (reportedSeq === undefined) reportedSeq = Number(rel?.lastRecoveryPoint?.sequence ?? 0);
    const state = rel ? stateName(rel.state) : "unknown";
    if (state !== lastState) {
      o.reporter.phase(o.vm, rel ? `state ${state}${rel.healthMessage ? ` (${rel.healthMessage})` : ""}` : "no relationship on the site yet: waiting for the primary's agent");
      lastState = state;
    }
    const inFlight = rel?.cycleInProgress;
    const last = rel?.lastRecoveryPoint;
    if (current && (!inFlight || Number(inFlight.cycleSequence) !== current.cycleSequence)) {
      if (last && Number(last.sequence) >= current.cycleSequence) {
        const { startedAt, ...sample } = current;
        const total = sample.bytesTotal || sample.bytesDone;
        const committedAt = last.committedAt?.getTime() ?? Date.now();
        o.reporter.committed({ ...sample, bytesDone: total, bytesTotal: total, recoveryPointId: last.recoveryPointId, seconds: (committedAt - startedAt) / 1000 });
        reportedSeq = Math.max(reportedSeq, current.cycleSequence);
      } else {
        const { startedAt: _, ...sample } = current;
        o.reporter.cycleEnded({ ...sample, message: rel?.healthMessage || "the site did not commit it; the agent retries (see 'qreplica events')" });
      }
      current = undefined;
    }
    if (last && Number(last.sequence) > reportedSeq) {
      // Not seen in flight: from its cut-off to its commit is as near as the site tells.
      const seconds = last.committedAt && last.cutoffTime ? (last.committedAt.getTime() - last.cutoffTime.getTime()) / 1000 : 0;
      o.reporter.committed({ ...sampleOfPoint(o.vm, last), recoveryPointId: last.recoveryPointId, seconds });
      reportedSeq = Number(last.sequence);
    }
    if (inFlight) {
      const sample: CycleSample = {
        vm: o.vm,
        kind: kindName(inFlight.kind),
        cycleSequence: Number(inFlight.cycleSequence),
        bytesDone: Number(inFlight.bytesDone),
        bytesTotal: Number(inFlight.bytesTotal),
      };
      if (!current || sample.bytesDone !== current.bytesDone || sample.bytesTotal !== current.bytesTotal) o.reporter.cycle(sample);
      current = { ...sample, startedAt: inFlight.startedAt?.getTime() ?? Date.now() };
    }
    if (o.until(rel)) return rel;
    if (o.deadline !== undefined && Date.now() > o.deadline) throw new WatchTimeoutError(`VM ${o.vm} did not get there in time (state ${state}); the replication goes on`);
    await new Promise((r) => setTimeout(r, every));
  }
}
