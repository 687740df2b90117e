import { errorMessage } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import type { ChecksumAlgorithm } from "../../gen/qreplica/v1/common.js";
import type { OutgoingReplicateRequest } from "../../transport/index.js";
import type { PrimaryStoppedInfo } from "../dataPlane/replicateSession.js";

/** What the relay needs of the forwarder and its open stream to the third site. */
export interface RelayContext {
  vmId: string;
  targetSiteId: string;
  /** This site's session with the primary's agent: stop the VM, ship a final cycle here. */
  stopPrimary(powerdownTimeoutSeconds: number): Promise<PrimaryStoppedInfo>;
  /** A point committed here that the third site has not got yet (the interval does not count now). */
  hasUnforwarded(): Promise<boolean>;
  forward(c: { seq: number; generation: number; maxChunk: number; checksum: ChecksumAlgorithm }): Promise<void>;
  lastForwardedCutoff(): string | undefined;
  send(message: OutgoingReplicateRequest): Promise<void>;
  /** The relay succeeded: this site records the failover downstream, which fences the primary here. */
  failedOver(stopped: PrimaryStoppedInfo): Promise<void>;
  /** Gives up: records why (status shows it) and tells the third site, whose planned failover fails with it. */
  fail(message: string): Promise<void>;
  logger: Logger;
}

/**
 * A planned failover asked for by the third site (C) of an extended replication A -> B -> C. The
 * VM runs at A, whose agent replicates to this site (B): B has that agent stop the VM and ship a
 * final cycle cut after the stop, as a planned failover at B would, forwards the final point to C
 * at once, and only then tells C the primary stopped (PrimaryStopped, the stop's time on A's
 * clock, which also stamps the final point's cut-off). C then fails over to that point: nothing
 * the guest wrote is lost. A's agent quits replicating the VM, as after any planned failover; B
 * records the failover downstream (FailedOverDownstream: A's agent is refused here as stale from
 * then on, should A's VM and agent be started again) and keeps its points (a reverse from C onto
 * B resyncs against them).
 */
/** PrimaryStopped saying the VM was not stopped, and why. */
export function notStopped(reason: string): OutgoingReplicateRequest {
  return { body: { $case: "primaryStopped", value: { generation: 0n, finalCycleSequence: 0n, method: "", disks: [], notStoppedReason: reason } } };
}

export async function relayPlannedFailover(
  r: RelayContext,
  powerdownTimeoutSeconds: number,
  cycle: { seq: number; generation: number; maxChunk: number; checksum: ChecksumAlgorithm },
): Promise<void> {
  r.logger.info({ vm: r.vmId, target: r.targetSiteId }, "the third site asked for a planned failover: the primary's agent stops the VM and ships its final cycle here");
  let stopped: PrimaryStoppedInfo;
  try {
    stopped = await r.stopPrimary(powerdownTimeoutSeconds);
  } catch (err) {
    return r.fail(`the primary could not be asked to stop VM ${r.vmId} for the planned failover at ${r.targetSiteId}: ${errorMessage(err)}`);
  }
  // From here on the VM is stopped at the primary and its agent has quit: a failure must say so,
  // since asking again finds no agent, and say how the third site fails over without losing writes.
  const stoppedNote = `VM ${r.vmId} is stopped at its primary (since ${stopped.stoppedAt.toISOString()}; its agent no longer replicates it)`;
  let seq = cycle.seq;
  if (await r.hasUnforwarded()) {
    try {
      await r.forward({ ...cycle, seq });
    } catch (err) {
      return r.fail(
        `${stoppedNote}, but its final point could not be forwarded to ${r.targetSiteId} (${errorMessage(err)}): this site forwards it once ${r.targetSiteId} is reachable ` +
          `('qreplica status ${r.vmId}' here shows pending 0 then); fail over there with --unplanned to its newest point, which then holds every write up to the stop`,
      );
    }
    seq++;
  }
  const cutoff = r.lastForwardedCutoff();
  if (!cutoff || Date.parse(cutoff) < stopped.stoppedAt.getTime()) {
    return r.fail(
      `${stoppedNote}, but the newest point forwarded to ${r.targetSiteId} (cut ${cutoff ?? "never"}) is older than the stop: its final cycle did not reach this site. ` +
        `Fail over there with --unplanned (writes after ${cutoff ?? "the first point"} are lost), or start the VM at its primary again`,
    );
  }
  await r.send({
    body: {
      $case: "primaryStopped",
      value: {
        generation: BigInt(cycle.generation),
        stoppedAt: stopped.stoppedAt,
        finalCycleSequence: BigInt(seq - 1),
        method: stopped.method,
        // The stopped VM's images are on the first site's host: no seed for a reverse from C.
        disks: [],
      },
    },
  });
  r.logger.info({ vm: r.vmId, target: r.targetSiteId, stoppedAt: stopped.stoppedAt, method: stopped.method }, "the primary stopped and its final point was forwarded");
  await r.failedOver(stopped);
}
