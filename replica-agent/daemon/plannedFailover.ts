/**
 * The primary's side of a planned failover: stop the VM, ship a final cycle cut after the stop,
 * tell the site, quit QEMU; or, when the final cycle cannot reach the site, give the VM back.
 */
import type { Logger } from "../../src/common/logger.js";
import type { PlannedFailoverRequested } from "../../src/gen/qreplica/v1/replication.js";
import type { CaptureCycle } from "../capture/index.js";
import type { AgentVmConfig } from "./agentConfig.js";
import { type CycleSenderOptions, type ReplicateStream, send, sendCycle } from "./cycleSender.js";
import type { ReplicationSource, CycleCapture } from "./replicationSource.js";
import type { ResponseQueue } from "./responseQueue.js";

export interface PlannedStop {
  source: ReplicationSource;
  capture: CycleCapture;
  stream: ReplicateStream;
  responses: ResponseQueue;
  generation: number;
  req: PlannedFailoverRequested;
  vm: AgentVmConfig;
  logger: Logger;
  sender: CycleSenderOptions;
}

/**
 * Planned failover: the guest is stopped for the final cycle (powered down, else its vCPUs paused;
 * see ReplicationSource.stopForFinalCycle); a final cycle cut after the stop ships the last
 * changes, the site hears that the VM stopped, and the VM ends.
 */
export async function stopForPlannedFailover(x: PlannedStop): Promise<void> {
  const { source, capture, stream, responses, generation, req, vm, logger } = x;
  logger.info({ vm: vm.id, powerdownTimeoutSeconds: req.powerdownTimeoutSeconds }, "planned failover requested: stopping the VM for its final cycle");
  const method = await source.stopForFinalCycle(req.powerdownTimeoutSeconds);
  const stoppedAt = new Date();
  let cycle: CaptureCycle;
  try {
    cycle = await capture.beginCycle();
    await sendCycle(stream, responses, cycle, generation, { ...x.sender, resync: false });
  } catch (err) {
    await abortPlannedFailover(source, method, err, vm, logger);
    throw err;
  }
  const disks = await source.diskImages();
  await send(stream, responses, {
    body: { $case: "primaryStopped", value: { generation: BigInt(generation), stoppedAt, finalCycleSequence: BigInt(cycle.seq), method, disks } },
  });
  await source.quit();
  logger.info({ vm: vm.id, method, finalCycle: cycle.seq }, "planned failover: VM stopped after its final cycle; this primary is done");
}

/**
 * The final cycle did not reach the site (it went away, say): the site has not heard that the VM
 * stopped, so no failover can follow from it. Production must not stay paused for a failover that
 * is not happening: vCPUs paused by us run again; a guest that powered itself off stays off.
 */
async function abortPlannedFailover(source: ReplicationSource, method: string, err: unknown, vm: AgentVmConfig, logger: Logger): Promise<void> {
  const why = err instanceof Error ? err.message : String(err);
  if (method === "pause") {
    const resumed = await source.resume().then(
      () => true,
      () => false,
    );
    if (resumed) {
      logger.warn({ vm: vm.id, err: why }, "planned failover aborted before its final cycle reached the replica site: the VM was resumed; run the planned failover again");
      return;
    }
  }
  logger.error(
    { vm: vm.id, err: why, method },
    "planned failover aborted before its final cycle reached the replica site: the guest is stopped; start it again (virsh start / system_reset + cont) or run the planned failover again",
  );
}
