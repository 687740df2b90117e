import { spawnQemu, type QemuProcess } from "./qemuProcess.js";

export interface StorageDaemonDisk {
  nodeName: string;
  path: string;
  format?: "qcow2" | "raw";
  readOnly?: boolean;
}

export interface StorageDaemonExport {
  id: string;
  nodeName: string;
  name: string;
  writable: boolean;
}

export interface StorageDaemonOptions {
  qmpSocketPath: string;
  nbdSocketPath?: string;
  disks: StorageDaemonDisk[];
  exports?: StorageDaemonExport[];
}

/**
 * A qemu-storage-daemon holding disks as block nodes. In tests it stands in for a VM: its writable
 * NBD export is the guest's write path. On a replica site it is the only writer of qcow2 chains.
 */
export function storageDaemonArgs(opts: StorageDaemonOptions): string[] {
  const args: string[] = [];
  for (const d of opts.disks) {
    const ro = d.readOnly ? ",read-only=on" : "";
    args.push("--blockdev", `driver=file,node-name=${d.nodeName}-file,filename=${escapeOpt(d.path)}${ro}`);
    args.push("--blockdev", `driver=${d.format ?? "qcow2"},node-name=${d.nodeName},file=${d.nodeName}-file${ro}`);
  }
  args.push("--chardev", `socket,id=qreplica-qmp,path=${escapeOpt(opts.qmpSocketPath)},server=on,wait=off`);
  args.push("--monitor", "chardev=qreplica-qmp");
  if (opts.nbdSocketPath) args.push("--nbd-server", `addr.type=unix,addr.path=${escapeOpt(opts.nbdSocketPath)}`);
  for (const e of opts.exports ?? []) {
    args.push("--export", `type=nbd,id=${e.id},node-name=${e.nodeName},name=${e.name},writable=${e.writable ? "on" : "off"}`);
  }
  return args;
}

export async function startStorageDaemon(opts: StorageDaemonOptions): Promise<QemuProcess> {
  const ready = [opts.qmpSocketPath, ...(opts.nbdSocketPath ? [opts.nbdSocketPath] : [])];
  return spawnQemu("qemu-storage-daemon", storageDaemonArgs(opts), ready);
}

/** QEMU's option syntax uses ',' as separator and ',,' as an escaped comma. */
export function escapeOpt(value: string): string {
  return value.replaceAll(",", ",,");
}
