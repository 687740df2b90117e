/**
 * The primary's side of a planned failover: stop the VM, ship a final cycle cut after the stop,
 * tell the site, quit QEMU; or, when the final cycle cannot reach the site, give the VM back.
 */
import type { Logger } from "../../src/common/logger.js";
import type { PlannedFailoverRequested } from "../../src/gen/qreplica/v1/replication.js";
import { type QmpClient, queryNamedBlockNodes } from "../../src/qemu/qmp/index.js";
import type { CaptureCycle, VmCapture } from "../capture/index.js";
import type { AgentVmConfig } from "./agentConfig.js";
import { type CycleSenderOptions, type ReplicateStream, send, sendCycle } from "./cycleSender.js";
import type { ResponseQueue } from "./responseQueue.js";

export interface PlannedStop {
  qmp: QmpClient;
  capture: VmCapture;
  stream: ReplicateStream;
  responses: ResponseQueue;
  generation: number;
  req: PlannedFailoverRequested;
  vm: AgentVmConfig;
  logger: Logger;
  sender: CycleSenderOptions;
}

/**
 * Planned failover: the guest gets `powerdown_timeout` to power off (QEMU must run with
 * -no-shutdown to stay up for the final cycle), else its vCPUs are paused; then a final cycle
 * cut after the stop ships the last changes, the site hears that the VM stopped, and QEMU quits.
 */
export async function stopForPlannedFailover(x: PlannedStop): Promise<void> {
  const { qmp, capture, stream, responses, generation, req, vm, logger } = x;
  logger.info({ vm: vm.id, powerdownTimeoutSeconds: req.powerdownTimeoutSeconds }, "planned failover requested: powering the VM down for its final cycle");
  let method = "powerdown";
  const shutdown = qmp
    .waitForEvent("SHUTDOWN", () => true, req.powerdownTimeoutSeconds * 1000)
    .then(
      () => true,
      () => false,
    );
  await qmp.execute("system_powerdown").catch(() => undefined);
  if (!(await shutdown)) {
    method = "pause";
    await qmp.execute("stop");
  }
  if (qmp.isClosed) throw new Error("the VM powered off and QEMU exited before the final cycle: run it with -no-shutdown so its last changes can be shipped");
  const stoppedAt = new Date();
  let cycle: CaptureCycle;
  try {
    cycle = await capture.beginCycle();
    await sendCycle(stream, responses, cycle, generation, { ...x.sender, resync: false });
  } catch (err) {
    await abortPlannedFailover(qmp, method, err, vm, logger);
    throw err;
  }
  const nodes = await queryNamedBlockNodes(qmp);
  const disks = vm.disks.map((d) => ({ diskId: d.id, imagePath: nodes.find((n) => n["node-name"] === d.node)?.image.filename ?? "" }));
  await send(stream, responses, {
    body: { $case: "primaryStopped", value: { generation: BigInt(generation), stoppedAt, finalCycleSequence: BigInt(cycle.seq), method, disks } },
  });
  await qmp.execute("quit").catch(() => undefined);
  logger.info({ vm: vm.id, method, finalCycle: cycle.seq }, "planned failover: VM stopped after its final cycle; this primary is done");
}

/**
 * The final cycle did not reach the site (it went away, say): the site has not heard that the VM
 * stopped, so no failover can follow from it. Production must not stay paused for a failover that
 * is not happening: vCPUs paused by us run again; a guest that powered itself off stays off.
 */
async function abortPlannedFailover(qmp: QmpClient, method: string, err: unknown, vm: AgentVmConfig, logger: Logger): Promise<void> {
  const why = err instanceof Error ? err.message : String(err);
  if (method === "pause" && !qmp.isClosed) {
    const resumed = await qmp.execute("cont").then(
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
