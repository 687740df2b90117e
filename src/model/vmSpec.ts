import { VmSpecError } from "./errors.js";

/** How a disk is attached; both are bootable by SeaBIOS (IDE is AHCI on q35). */
export type DiskBus = "virtio" | "ide";
export const DISK_BUSES: readonly DiskBus[] = ["virtio", "ide"];

export type NicModel = "virtio-net-pci" | "e1000" | "e1000e" | "rtl8139";
export const NIC_MODELS: readonly NicModel[] = ["virtio-net-pci", "e1000", "e1000e", "rtl8139"];

export interface VmDiskSpec {
  /** The replicated disk's id; `launchVm` takes one image per diskId. Also the QEMU node name. */
  diskId: string;
  bus: DiskBus;
  /** Firmware boot order, 0 first; at most one disk per index. */
  bootIndex?: number;
}

export interface VmNicSpec {
  /** Stable id, also the QEMU device id stem. */
  id: string;
  model: NicModel;
  /** Unicast MAC, `52:54:00:xx:xx:xx` style; kept on failover so guest OS config still matches. */
  mac: string;
  /** Name of the network the NIC is on at the primary site; mapped at launch (see LaunchNetwork). */
  network?: string;
  /**
   * Whether the NIC carries its network-boot option ROM (QEMU's default, `true`). `false` sets
   * `romfile=`: the firmware skips the NIC's iPXE ROM (a faster boot) and cannot boot from it.
   */
  pxe?: boolean;
}

/**
 * The hardware of a replicated VM, as recorded with the relationship (`vmSpec` in the ledger) and
 * used to launch it at the replica site on failover or test failover.
 */
export interface VmSpec {
  /** QEMU machine type: `q35`, `pc`, or a versioned one such as `pc-q35-7.2`. */
  machine: string;
  /** QEMU `-cpu` model; omitted = QEMU's default for the accelerator. */
  cpu?: string;
  cpus: number;
  memoryMiB: number;
  disks: VmDiskSpec[];
  nics: VmNicSpec[];
  /** Extra qemu-system arguments (devices the spec has no field for); see FORBIDDEN_EXTRA_ARGS. */
  extraArgs?: string[];
}

/** QEMU ids and node names: a letter first, then letters, digits, '-', '_' (and QEMU's limit of 31). */
const ID = /^[A-Za-z][A-Za-z0-9_-]{0,25}$/;
const MACHINE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const CPU_MODEL = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;
const MAX_CPUS = 288;
const MIN_MEMORY_MIB = 16;
const MAX_MEMORY_MIB = 16 * 1024 * 1024;

/** Options the launcher owns; each maps to the spec field or launch option to use instead. */
export const FORBIDDEN_EXTRA_ARGS: Readonly<Record<string, string>> = {
  "-accel": "the launcher picks KVM or TCG",
  "-enable-kvm": "the launcher picks KVM or TCG",
  "-machine": "set spec.machine",
  "-M": "set spec.machine",
  "-cpu": "set spec.cpu",
  "-smp": "set spec.cpus",
  "-m": "set spec.memoryMiB",
  "-drive": "list the disk in spec.disks; its image comes from the launch's diskImages",
  "-blockdev": "list the disk in spec.disks; its image comes from the launch's diskImages",
  "-hda": "list the disk in spec.disks",
  "-hdb": "list the disk in spec.disks",
  "-cdrom": "list the disk in spec.disks",
  "-netdev": "list the NIC in spec.nics; its backend comes from the launch's network",
  "-nic": "list the NIC in spec.nics",
  "-net": "list the NIC in spec.nics",
  "-qmp": "the launcher owns the QMP monitor",
  "-monitor": "the launcher owns the monitors",
  "-mon": "the launcher owns the monitors",
  "-serial": "the launcher logs COM1 to a file in runDir",
  "-nographic": "the launcher runs with -display none",
  "-daemonize": "the launcher supervises the QEMU process",
  "-pidfile": "the launcher supervises the QEMU process",
  "-S": "the launcher starts the VM paused and continues it itself",
  "-name": "the launch's name is used",
};

/**
 * Checks an untrusted spec (e.g. JSON from the ledger) and returns it typed. Every problem found
 * is reported at once, each naming the field and the fix.
 */
export function validateVmSpec(input: unknown): VmSpec {
  const problems: string[] = [];
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    throw new VmSpecError([`the spec must be an object with machine, cpus, memoryMiB, disks and nics, got ${describe(input)}`]);
  }
  const s = input as Record<string, unknown>;
  const known = new Set(["machine", "cpu", "cpus", "memoryMiB", "disks", "nics", "extraArgs"]);
  for (const k of Object.keys(s)) if (!known.has(k)) problems.push(`${k}: unknown field; the known fields are ${[...known].join(", ")}`);

  if (typeof s.machine !== "string" || !MACHINE.test(s.machine)) {
    problems.push(`machine: must be a QEMU machine type such as "q35", "pc" or "pc-q35-7.2", got ${describe(s.machine)}`);
  }
  if (s.cpu !== undefined && (typeof s.cpu !== "string" || !CPU_MODEL.test(s.cpu))) {
    problems.push(`cpu: must be a QEMU CPU model name such as "qemu64" or "EPYC" (or be omitted), got ${describe(s.cpu)}`);
  }
  if (!Number.isInteger(s.cpus) || (s.cpus as number) < 1 || (s.cpus as number) > MAX_CPUS) {
    problems.push(`cpus: must be an integer from 1 to ${MAX_CPUS}, got ${describe(s.cpus)}`);
  }
  if (!Number.isInteger(s.memoryMiB) || (s.memoryMiB as number) < MIN_MEMORY_MIB || (s.memoryMiB as number) > MAX_MEMORY_MIB) {
    problems.push(`memoryMiB: must be an integer number of MiB from ${MIN_MEMORY_MIB} to ${MAX_MEMORY_MIB}, got ${describe(s.memoryMiB)}`);
  }

  const ids = new Map<string, string>();
  const claimId = (id: string, field: string) => {
    const other = ids.get(id);
    if (other) problems.push(`${field}: id "${id}" is already used by ${other}; ids must be unique across disks and NICs`);
    else ids.set(id, field);
  };

  if (!Array.isArray(s.disks) || s.disks.length === 0) {
    problems.push(`disks: must be a non-empty array of { diskId, bus, bootIndex? }, got ${describe(s.disks)}`);
  } else {
    const bootIndexes = new Map<number, string>();
    s.disks.forEach((d: unknown, i) => {
      const f = `disks[${i}]`;
      if (typeof d !== "object" || d === null) return void problems.push(`${f}: must be an object { diskId, bus, bootIndex? }`);
      const disk = d as Record<string, unknown>;
      for (const k of Object.keys(disk)) if (!["diskId", "bus", "bootIndex"].includes(k)) problems.push(`${f}.${k}: unknown field; a disk has diskId, bus, bootIndex`);
      if (typeof disk.diskId !== "string" || !ID.test(disk.diskId)) {
        problems.push(`${f}.diskId: must start with a letter and have 1-26 letters, digits, '-' or '_', got ${describe(disk.diskId)}`);
      } else claimId(disk.diskId, `${f}.diskId`);
      if (!DISK_BUSES.includes(disk.bus as DiskBus)) problems.push(`${f}.bus: must be one of ${DISK_BUSES.map((b) => `"${b}"`).join(", ")}, got ${describe(disk.bus)}`);
      if (disk.bootIndex !== undefined) {
        if (!Number.isInteger(disk.bootIndex) || (disk.bootIndex as number) < 0) {
          problems.push(`${f}.bootIndex: must be an integer >= 0 (0 boots first) or be omitted, got ${describe(disk.bootIndex)}`);
        } else {
          const other = bootIndexes.get(disk.bootIndex as number);
          if (other) problems.push(`${f}.bootIndex: ${String(disk.bootIndex)} is already used by ${other}; give each disk its own boot index`);
          else bootIndexes.set(disk.bootIndex as number, f);
        }
      }
    });
  }

  if (!Array.isArray(s.nics)) {
    problems.push(`nics: must be an array of { id, model, mac, network?, pxe? } (empty for no NIC), got ${describe(s.nics)}`);
  } else {
    const macs = new Map<string, string>();
    s.nics.forEach((n: unknown, i) => {
      const f = `nics[${i}]`;
      if (typeof n !== "object" || n === null) return void problems.push(`${f}: must be an object { id, model, mac, network?, pxe? }`);
      const nic = n as Record<string, unknown>;
      for (const k of Object.keys(nic))
        if (!["id", "model", "mac", "network", "pxe"].includes(k)) problems.push(`${f}.${k}: unknown field; a NIC has id, model, mac, network, pxe`);
      if (typeof nic.id !== "string" || !ID.test(nic.id)) {
        problems.push(`${f}.id: must start with a letter and have 1-26 letters, digits, '-' or '_', got ${describe(nic.id)}`);
      } else claimId(nic.id, `${f}.id`);
      if (!NIC_MODELS.includes(nic.model as NicModel)) problems.push(`${f}.model: must be one of ${NIC_MODELS.map((m) => `"${m}"`).join(", ")}, got ${describe(nic.model)}`);
      if (typeof nic.mac !== "string" || !MAC.test(nic.mac)) {
        problems.push(`${f}.mac: must be six hex octets separated by ':' such as "52:54:00:12:34:56", got ${describe(nic.mac)}`);
      } else if ((parseInt(nic.mac.slice(0, 2), 16) & 1) === 1) {
        problems.push(`${f}.mac: ${nic.mac} is a multicast address (lowest bit of the first octet set); use a unicast one such as "52:54:00:..."`);
      } else if (/^(00:){5}00$/.test(nic.mac)) {
        problems.push(`${f}.mac: 00:00:00:00:00:00 is not a usable address; use one such as "52:54:00:12:34:56"`);
      } else {
        const key = nic.mac.toLowerCase();
        const other = macs.get(key);
        if (other) problems.push(`${f}.mac: ${nic.mac} is already used by ${other}; each NIC needs its own MAC`);
        else macs.set(key, f);
      }
      if (nic.network !== undefined && (typeof nic.network !== "string" || !NETWORK_NAME.test(nic.network))) {
        problems.push(`${f}.network: must be a network name of letters, digits, '.', '_', ':' or '-' (or be omitted), got ${describe(nic.network)}`);
      }
      if (nic.pxe !== undefined && typeof nic.pxe !== "boolean") problems.push(`${f}.pxe: must be true or false (or be omitted for true), got ${describe(nic.pxe)}`);
    });
  }

  if (s.extraArgs !== undefined) {
    if (!Array.isArray(s.extraArgs) || !s.extraArgs.every((a) => typeof a === "string")) {
      problems.push(`extraArgs: must be an array of strings (or be omitted), got ${describe(s.extraArgs)}`);
    } else {
      s.extraArgs.forEach((a: string, i) => {
        const opt = a.startsWith("--") ? a.slice(1) : a;
        const why = Object.hasOwn(FORBIDDEN_EXTRA_ARGS, opt) ? FORBIDDEN_EXTRA_ARGS[opt] : undefined;
        if (why) problems.push(`extraArgs[${i}]: ${a} is managed by the launcher; ${why}`);
      });
    }
  }

  if (problems.length > 0) throw new VmSpecError(problems);
  const spec = s as unknown as VmSpec;
  return {
    machine: spec.machine,
    ...(spec.cpu === undefined ? {} : { cpu: spec.cpu }),
    cpus: spec.cpus,
    memoryMiB: spec.memoryMiB,
    disks: spec.disks.map((d) => ({ diskId: d.diskId, bus: d.bus, ...(d.bootIndex === undefined ? {} : { bootIndex: d.bootIndex }) })),
    nics: spec.nics.map((n) => ({
      id: n.id,
      model: n.model,
      mac: n.mac.toLowerCase(),
      ...(n.network === undefined ? {} : { network: n.network }),
      ...(n.pxe === undefined ? {} : { pxe: n.pxe }),
    })),
    extraArgs: [...(spec.extraArgs ?? [])],
  };
}

function describe(v: unknown): string {
  if (v === undefined) return "nothing";
  if (typeof v === "string") return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}...` : v);
  if (Array.isArray(v)) return "an array";
  if (v === null) return "null";
  return typeof v === "object" ? "an object" : `${typeof v} ${String(v)}`;
}
