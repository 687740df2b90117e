import { resolve } from "node:path";
import { xmlEscape } from "../../qemu/libvirt/virsh.js";
import type { VmDiskSpec, VmNicSpec, VmSpec } from "../../model/vmSpec.js";
import { nicArgs, resolveNicBackends, type LaunchNetwork } from "./network.js";
import type { VmLifetime } from "./port.js";

/** The namespace of the element that marks a domain as launched by a qreplica site. */
export const LAUNCH_XMLNS = "https://qreplica.dev/xmlns/launch/1";

export interface DomainXmlOptions {
  domain: string;
  spec: VmSpec;
  /** Absolute qcow2 image per diskId (overlays on recovery points). */
  diskImages: Record<string, string>;
  serialLogPath: string;
  network: LaunchNetwork;
  /** `kvm` or `qemu` (TCG). */
  domainType: "kvm" | "qemu";
  /** Which site launched it (its directory) and for how long it may live: read back at a restart. */
  owner: { siteDir: string; lifetime: VmLifetime };
  /** QEMU runs as this uid:gid (static DAC label, no relabelling): the site's own files stay the site's. */
  runAs: { uid: number; gid: number };
}

/** The site and lifetime a domain's XML says launched it, or undefined for a domain no site launched. */
export function launchOwnerOf(xml: string): { siteDir: string; lifetime: VmLifetime } | undefined {
  const tag = /<(?:[A-Za-z0-9_-]+:)?launch\b[^>]*>/.exec(xml)?.[0];
  if (!tag?.includes(LAUNCH_XMLNS)) return undefined;
  const attr = (n: string) => new RegExp(`\\b${n}=(['"])(.*?)\\1`).exec(tag)?.[2];
  const siteDir = attr("siteDir");
  const lifetime = attr("lifetime");
  if (siteDir === undefined || (lifetime !== "outlives-site" && lifetime !== "dies-with-site")) return undefined;
  return { siteDir: unescapeXml(siteDir), lifetime };
}

/**
 * A `<domain>` from the replicated spec, as close to what the qemu launcher runs as libvirt allows:
 * no default devices (no USB, balloon, graphics), COM1 to a file, ACPI for a clean powerdown.
 * Disks keep their bus (IDE is SATA/AHCI on q35, as QEMU does there) and boot order; each carries
 * the user alias `ua-<diskId>`. NICs on the isolated or user backend are passed to QEMU as
 * `-netdev user,restrict=on` (libvirt's user interface cannot restrict), bridges and taps as
 * libvirt interfaces.
 */
export function domainXml(o: DomainXmlOptions): string {
  const { spec } = o;
  const q35 = spec.machine.includes("q35");
  const perDeviceBoot = spec.disks.some((d) => d.bootIndex !== undefined);
  const backends = resolveNicBackends(o.domain, spec.nics, o.network);
  const passNics = spec.nics.filter((_, i) => backends[i]!.type === "isolated" || backends[i]!.type === "user");
  const passArgs = [...nicArgs(o.domain, passNics, o.network), ...(spec.extraArgs ?? [])];
  const lines = [
    `<domain type='${o.domainType}'${passArgs.length ? " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'" : ""}>`,
    `  <name>${xmlEscape(o.domain)}</name>`,
    `  <metadata><qr:launch xmlns:qr='${LAUNCH_XMLNS}' siteDir='${xmlEscape(o.owner.siteDir)}' lifetime='${o.owner.lifetime}'/></metadata>`,
    `  <memory unit='MiB'>${spec.memoryMiB}</memory>`,
    `  <vcpu>${spec.cpus}</vcpu>`,
    `  <os><type arch='x86_64' machine='${xmlEscape(spec.machine)}'>hvm</type>${perDeviceBoot ? "" : "<boot dev='hd'/>"}</os>`,
    "  <features><acpi/><apic/></features>",
    ...(spec.cpu ? [`  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>${xmlEscape(spec.cpu)}</model></cpu>`] : []),
    "  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>",
    "  <devices>",
    ...diskElements(spec.disks, o.diskImages, q35, perDeviceBoot),
    ...spec.nics.flatMap((nic, i) => {
      const b = backends[i]!;
      if (b.type === "bridge") return [interfaceElement(nic, "bridge", `<source bridge='${xmlEscape(b.bridge)}'/>`)];
      if (b.type === "tap") return [interfaceElement(nic, "ethernet", `<target dev='${xmlEscape(b.ifname)}' managed='no'/>`)];
      return [];
    }),
    `    <serial type='file'><source path='${xmlEscape(resolve(o.serialLogPath))}'/><target port='0'/></serial>`,
    "    <controller type='usb' model='none'/>",
    "    <memballoon model='none'/>",
    "  </devices>",
    `  <seclabel type='static' model='dac' relabel='no'><label>+${o.runAs.uid}:+${o.runAs.gid}</label></seclabel>`,
    ...(passArgs.length ? ["  <qemu:commandline>", ...passArgs.map((a) => `    <qemu:arg value='${xmlEscape(a)}'/>`), "  </qemu:commandline>"] : []),
    "</domain>",
    "",
  ];
  return lines.join("\n");
}

function diskElements(disks: readonly VmDiskSpec[], images: Record<string, string>, q35: boolean, perDeviceBoot: boolean): string[] {
  const used = new Map<string, number>();
  return disks.map((d) => {
    const [bus, stem] = d.bus === "virtio" ? ["virtio", "vd"] : q35 ? ["sata", "sd"] : ["ide", "hd"];
    const n = used.get(stem) ?? 0;
    used.set(stem, n + 1);
    const boot = perDeviceBoot && d.bootIndex !== undefined ? `<boot order='${d.bootIndex + 1}'/>` : "";
    return (
      "    <disk type='file' device='disk'>" +
      `<driver name='qemu' type='qcow2'/><source file='${xmlEscape(resolve(images[d.diskId]!))}'/>` +
      `<target dev='${stem}${String.fromCharCode(97 + n)}' bus='${bus}'/>${boot}<alias name='ua-${d.diskId}'/></disk>`
    );
  });
}

function interfaceElement(nic: VmNicSpec, type: string, source: string): string {
  const model = nic.model === "virtio-net-pci" ? "virtio" : nic.model;
  return (
    `    <interface type='${type}'><mac address='${nic.mac}'/>${source}<model type='${model}'/>` +
    `${nic.pxe === false ? "<rom enabled='no'/>" : ""}<alias name='ua-${nic.id}'/></interface>`
  );
}

function unescapeXml(s: string): string {
  return s
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&amp;/g, "&");
}
