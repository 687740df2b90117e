import { accessSync, constants } from "node:fs";
import { escapeOpt } from "./storageDaemon.js";
import { spawnQemu, type QemuProcess } from "./qemuProcess.js";

export interface SystemVmDisk {
  /** Block node name and qdev id stem: node `vda`, device `vda-dev`. */
  nodeName: string;
  path: string;
  format?: "qcow2" | "raw";
  /** virtio-blk (default) or an IDE disk a BIOS boot sector can be loaded from. */
  bus?: "virtio" | "ide";
  bootIndex?: number;
}

export interface SystemVmOptions {
  qmpSocketPath: string;
  disks: SystemVmDisk[];
  machine?: string;
  cpus?: number;
  memoryMiB?: number;
  /** Start paused (-S): the CPU never runs, but devices and QMP work. */
  paused?: boolean;
  serialLogPath?: string;
  accel?: "kvm" | "tcg" | "auto";
  extraArgs?: string[];
}

/** KVM when /dev/kvm is usable by this process, TCG otherwise (CI machines may have no KVM). */
export function kvmUsable(): boolean {
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export function systemVmArgs(opts: SystemVmOptions): string[] {
  const accel = opts.accel === undefined || opts.accel === "auto" ? (kvmUsable() ? "kvm" : "tcg") : opts.accel;
  const args = [
    "-accel",
    accel,
    "-M",
    opts.machine ?? "q35",
    "-smp",
    String(opts.cpus ?? 1),
    "-m",
    String(opts.memoryMiB ?? 64),
    "-nodefaults",
    "-display",
    "none",
    "-no-user-config",
    "-chardev",
    `socket,id=qreplica-qmp,path=${escapeOpt(opts.qmpSocketPath)},server=on,wait=off`,
    "-mon",
    "chardev=qreplica-qmp,mode=control",
  ];
  if (opts.paused) args.push("-S");
  if (opts.serialLogPath) args.push("-serial", `file:${opts.serialLogPath}`);
  for (const d of opts.disks) {
    args.push("-blockdev", `driver=file,node-name=${d.nodeName}-file,filename=${escapeOpt(d.path)}`);
    args.push("-blockdev", `driver=${d.format ?? "qcow2"},node-name=${d.nodeName},file=${d.nodeName}-file`);
    const boot = d.bootIndex === undefined ? "" : `,bootindex=${d.bootIndex}`;
    args.push("-device", d.bus === "ide" ? `ide-hd,drive=${d.nodeName},id=${d.nodeName}-dev${boot}` : `virtio-blk-pci,drive=${d.nodeName},id=${d.nodeName}-dev${boot}`);
  }
  args.push(...(opts.extraArgs ?? []));
  return args;
}

export async function startSystemVm(opts: SystemVmOptions): Promise<QemuProcess> {
  return spawnQemu("qemu-system-x86_64", systemVmArgs(opts), [opts.qmpSocketPath]);
}
