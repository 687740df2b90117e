import { join } from "node:path";
import { createImage } from "./qemuImg.js";
import type { QemuProcess } from "./qemuProcess.js";
import { runTool } from "./runTool.js";
import { startStorageDaemon } from "./storageDaemon.js";

export interface StorageDaemonVm {
  dir: string;
  qmpSocketPath: string;
  nbdSocketPath: string;
  disks: Array<{ id: string; node: string; path: string; guestExport: string }>;
  proc: QemuProcess;
  /** Guest writes through the disk's writable NBD export, e.g. "write -P 0xab 1M 64k", "write -z 2M 1M". */
  guestWrite(diskId: string, commands: string[]): Promise<void>;
  /** URI that reads the disk's current guest-visible content through QEMU. */
  guestUri(diskId: string): string;
  restart(): Promise<void>;
}

/**
 * A "VM" made of qemu-storage-daemon: qcow2 disks as block nodes, a QMP monitor for the agent, and
 * a writable NBD export per disk standing in for the guest's write path.
 */
export async function startStorageDaemonVm(dir: string, diskSpecs: Array<{ id: string; sizeBytes: number }>, opts: { createImages?: boolean } = {}): Promise<StorageDaemonVm> {
  const qmpSocketPath = join(dir, "qmp.sock");
  const nbdSocketPath = join(dir, "nbd.sock");
  const disks = diskSpecs.map((d) => ({ id: d.id, node: `node-${d.id}`, path: join(dir, `${d.id}.qcow2`), guestExport: `guest-${d.id}` }));
  if (opts.createImages ?? true) {
    for (const [i, d] of disks.entries()) await createImage(d.path, diskSpecs[i]!.sizeBytes);
  }
  const launch = () =>
    startStorageDaemon({
      qmpSocketPath,
      nbdSocketPath,
      disks: disks.map((d) => ({ nodeName: d.node, path: d.path })),
      exports: disks.map((d) => ({ id: d.guestExport, nodeName: d.node, name: d.guestExport, writable: true })),
    });
  const vm: StorageDaemonVm = {
    dir,
    qmpSocketPath,
    nbdSocketPath,
    disks,
    proc: await launch(),
    guestUri: (diskId) => `nbd+unix:///guest-${diskId}?socket=${nbdSocketPath}`,
    async guestWrite(diskId, commands) {
      await runTool("qemu-io", ["-f", "raw", vm.guestUri(diskId), ...commands.flatMap((c) => ["-c", c])]);
    },
    async restart() {
      vm.proc = await launch();
    },
  };
  return vm;
}
