import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { SiteVm, VmRef } from "../launcher/index.js";

/**
 * A failover VM: production after a failover, so it must outlive the site process. Recorded in
 * `vm.json` beside its overlays, so that a restarted site adopts it instead of losing track of it.
 */
export interface FailoverVm {
  name: string;
  /** Which launcher runs it and how to find it again (a QEMU pid and monitor, or a libvirt domain). */
  ref: VmRef;
  serialLogPath: string;
  overlays: string[];
  /** Present while this process launched it and still holds its monitor. */
  launched?: SiteVm;
  /** Its monitor was handed to a reverse-replication agent (QEMU serves one client per monitor). */
  released: boolean;
}

const VM_RECORD = "vm.json";

export const vmRecordPath = (dir: string) => join(dir, VM_RECORD);

const LAUNCH_INTENT = "launch.json";

export function writeLaunchIntent(dir: string, pointId: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, LAUNCH_INTENT), JSON.stringify({ pointId, at: new Date().toISOString() }), { mode: 0o600 });
}

export function readLaunchIntent(dir: string): { pointId: string } | undefined {
  try {
    const r = JSON.parse(readFileSync(join(dir, LAUNCH_INTENT), "utf8")) as { pointId?: unknown };
    return typeof r.pointId === "string" ? { pointId: r.pointId } : undefined;
  } catch {
    return undefined;
  }
}

export function writeVmRecord(dir: string, vm: FailoverVm): void {
  const { launched: _launched, ...record } = vm;
  // A qemu VM's pid and monitor also at the top level, where versions before the launcher port read them.
  const legacy = vm.ref.launcher === "qemu" ? { pid: vm.ref.pid, qmpSocketPath: vm.ref.qmpSocketPath } : {};
  writeFileSync(join(dir, VM_RECORD), JSON.stringify({ ...record, ...legacy }, null, 2), { mode: 0o600 });
}

export function readVmRecord(dir: string): FailoverVm | undefined {
  const path = join(dir, VM_RECORD);
  if (!existsSync(path)) return undefined;
  try {
    const r = JSON.parse(readFileSync(path, "utf8")) as Partial<FailoverVm> & { pid?: unknown; qmpSocketPath?: unknown };
    if (typeof r.name !== "string") return undefined;
    // Records from before the launcher port hold a QEMU pid and monitor at the top level.
    const ref =
      vmRefOf(r.ref) ?? (typeof r.pid === "number" && typeof r.qmpSocketPath === "string" ? { launcher: "qemu" as const, pid: r.pid, qmpSocketPath: r.qmpSocketPath } : undefined);
    if (!ref) return undefined;
    return { name: r.name, ref, serialLogPath: r.serialLogPath ?? "", overlays: r.overlays ?? [], released: r.released === true };
  } catch {
    return undefined;
  }
}

function vmRefOf(v: unknown): VmRef | undefined {
  if (typeof v !== "object" || v === null) return undefined;
  const r = v as Record<string, unknown>;
  if (r.launcher === "qemu" && typeof r.pid === "number" && typeof r.qmpSocketPath === "string") return { launcher: "qemu", pid: r.pid, qmpSocketPath: r.qmpSocketPath };
  if (r.launcher === "libvirt" && typeof r.uri === "string" && typeof r.domain === "string") return { launcher: "libvirt", uri: r.uri, domain: r.domain };
  return undefined;
}
