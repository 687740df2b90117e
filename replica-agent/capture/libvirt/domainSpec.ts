import { NIC_MODELS, validateVmSpec, type NicModel, type VmDiskSpec, type VmNicSpec, type VmSpec } from "../../../src/model/vmSpec.js";
import { VmSpecError } from "../../../src/model/errors.js";

const attr = (tag: string | undefined, name: string): string | undefined => (tag ? new RegExp(`\\b${name}=(['"])(.*?)\\1`).exec(tag)?.[2] : undefined);
const firstTag = (xml: string, tag: string): string | undefined => new RegExp(`<${tag}\\b[^>]*>`).exec(xml)?.[0];
const UNIT_BYTES: Record<string, number> = {
  b: 1,
  bytes: 1,
  k: 1024,
  KiB: 1024,
  M: 1024 ** 2,
  MiB: 1024 ** 2,
  G: 1024 ** 3,
  GiB: 1024 ** 3,
  KB: 1000,
  MB: 1000 ** 2,
  GB: 1000 ** 3,
};
const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

/**
 * The replicated VM spec read from a libvirt domain's XML (for an agent config without `spec:`):
 * memory, vCPUs, machine, the disks the capture replicates (diskId = libvirt's target, as the
 * capture names them; virtio stays virtio, IDE and SATA are `ide`) with their boot order, and the
 * NICs with their MAC, model and network name. Whatever the spec cannot describe (a SCSI disk, a
 * NIC model it lacks, another architecture) is a problem: then no spec, and the problems say why.
 * The CPU model is not carried (host-model and host-passthrough mean nothing at another site).
 */
export function specFromDomainXml(xml: string): { spec?: VmSpec; problems: string[] } {
  const problems: string[] = [];
  const osType = firstTag(xml, "type");
  const arch = attr(osType, "arch");
  if (arch !== undefined && arch !== "x86_64") problems.push(`os arch ${arch}: the launchers run x86_64 guests only`);
  const mem = /<memory\b([^>]*)>\s*(\d+)\s*<\/memory>/.exec(xml);
  const factor = UNIT_BYTES[attr(mem?.[1] ?? "", "unit") ?? "KiB"];
  const memoryMiB = mem && factor ? Math.floor((Number(mem[2]) * factor) / 1024 ** 2) : undefined;
  const cpus = Number(/<vcpu\b[^>]*>\s*(\d+)\s*<\/vcpu>/.exec(xml)?.[1]);
  const devices = /<devices>([\s\S]*)<\/devices>/.exec(xml)?.[1] ?? "";
  const disks = domainSpecDisks(devices, problems);
  if (disks.length > 0 && !disks.some((d) => d.bootIndex !== undefined)) disks[0] = { ...disks[0]!, bootIndex: 0 };
  const nics = domainSpecNics(devices, problems);
  const candidate = { machine: attr(osType, "machine") ?? "pc", cpus, memoryMiB, disks, nics };
  if (problems.length > 0) return { problems };
  try {
    return { spec: validateVmSpec(candidate), problems };
  } catch (err) {
    if (err instanceof VmSpecError) return { problems: [...err.problems] };
    throw err;
  }
}

function domainSpecDisks(devices: string, problems: string[]): VmDiskSpec[] {
  const disks: VmDiskSpec[] = [];
  for (const m of devices.matchAll(/<disk\b([^>]*)>([\s\S]*?)<\/disk>/g)) {
    if ((attr(m[1], "device") ?? "disk") !== "disk") continue;
    const top = (m[2] ?? "").replace(/<backingStore\b[\s\S]*?<\/backingStore>/g, "");
    const target = firstTag(top, "target");
    const source = firstTag(top, "source");
    const dev = attr(target, "dev");
    if (!dev || !(attr(source, "file") ?? attr(source, "dev"))) continue;
    const bus = attr(target, "bus") ?? "ide";
    if (bus !== "virtio" && bus !== "ide" && bus !== "sata") {
      problems.push(`disk ${dev}: bus ${bus} has no counterpart in the spec (virtio, ide/sata); write the agent config's spec: by hand`);
      continue;
    }
    const order = attr(firstTag(top, "boot"), "order");
    disks.push({ diskId: dev, bus: bus === "virtio" ? "virtio" : "ide", ...(order !== undefined ? { bootIndex: Number(order) - 1 } : {}) });
  }
  return disks;
}

function domainSpecNics(devices: string, problems: string[]): VmNicSpec[] {
  const nics: VmNicSpec[] = [];
  for (const m of devices.matchAll(/<interface\b([^>]*)>([\s\S]*?)<\/interface>/g)) {
    const body = m[2] ?? "";
    const mac = attr(firstTag(body, "mac"), "address");
    const libvirtModel = attr(firstTag(body, "model"), "type") ?? "rtl8139";
    const model = (libvirtModel === "virtio" ? "virtio-net-pci" : libvirtModel) as NicModel;
    const id = `nic${nics.length}`;
    if (!NIC_MODELS.includes(model)) {
      problems.push(`interface ${mac ?? id}: model ${libvirtModel} has no counterpart in the spec (${NIC_MODELS.join(", ")})`);
      continue;
    }
    if (!mac) continue;
    const src = firstTag(body, "source");
    const network = attr(src, "network") ?? attr(src, "bridge");
    const noRom = /<rom\b[^>]*\benabled=(['"])no\1/.test(body);
    nics.push({ id, model, mac, ...(network && NETWORK_NAME.test(network) ? { network } : {}), ...(noRom ? { pxe: false } : {}) });
  }
  return nics;
}
