import type { QmpClient } from "../../src/qemu/qmp/index.js";

export { startStorageDaemonVm, type StorageDaemonVm } from "../../src/qemu/processes/index.js";

/** Writes through a qemu-system VM's virtio-blk device (works while the VM is paused). */
export async function deviceWrite(qmp: QmpClient, deviceId: string, command: string): Promise<void> {
  const out = await qmp.humanMonitorCommand(`qemu-io -d /machine/peripheral/${deviceId}/virtio-backend "${command}"`);
  if (/error|failed/i.test(out)) throw new Error(`qemu-io ${command}: ${out.trim()}`);
}
