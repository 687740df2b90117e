import type { Logger } from "../../src/common/logger.js";
import { QmpClient } from "../../src/qemu/qmp/index.js";

export interface PauseMarker {
  /** Persisted before `stop`, so an agent that dies inside the pause resumes the guest at its next start. */
  set(): void;
  clear(): void;
}

export interface PausedResult<T> {
  result: T;
  /** How long the vCPUs were stopped (stop reply to cont reply); undefined when the VM was not running. */
  pausedMs: number | undefined;
}

/**
 * Runs `fn` with the guest's vCPUs stopped, so steps that are not QMP transaction actions
 * (blockdev-add, qom-set) still form one cut-off. `stop` drains in-flight I/O. The guest is
 * resumed in every path (`cont` in a finally, over a fresh monitor connection if ours broke). A VM
 * that was not running (paused by its operator, or never started) is left as it was.
 */
export async function withVcpusPaused<T>(qmp: QmpClient, marker: PauseMarker, logger: Logger, fn: () => Promise<T>): Promise<PausedResult<T>> {
  const status = await qmp.execute<{ status: string; running: boolean }>("query-status");
  if (!status.running) return { result: await fn(), pausedMs: undefined };
  marker.set();
  try {
    await qmp.execute("stop");
  } catch (err) {
    // Not paused by us: a later start must not resume a VM someone else paused.
    marker.clear();
    throw err;
  }
  const stoppedAt = process.hrtime.bigint();
  let result: T;
  try {
    result = await fn();
  } finally {
    await resumeVcpus(qmp, logger);
    marker.clear();
  }
  const pausedMs = Number(process.hrtime.bigint() - stoppedAt) / 1e6;
  return { result, pausedMs };
}

/** `cont`, over a fresh monitor connection if ours broke (the guest must never stay paused by us). */
export async function resumeVcpus(qmp: QmpClient, logger: Logger): Promise<void> {
  try {
    await qmp.execute("cont");
    return;
  } catch (err) {
    if (!qmp.isClosed) throw err;
    logger.warn({ err }, "the monitor connection broke during the cut-off pause; resuming the guest over a new connection");
  }
  const fresh = await QmpClient.connect({ socketPath: qmp.socketPath, logger });
  try {
    await fresh.execute("cont");
  } finally {
    await fresh.close();
  }
}
