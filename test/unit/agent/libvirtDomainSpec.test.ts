import { describe, expect, it } from "vitest";
import { specFromDomainXml } from "../../../replica-agent/capture/libvirt/domainSpec.js";
import { domainXml } from "../../../src/site/launcher/index.js";

/** As `virsh dumpxml` prints a typical virt-manager domain (trimmed). */
const VIRT_MANAGER = `<domain type='kvm' id='3'>
  <name>web1</name>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2' index='2'/>
      <backingStore type='file' index='3'><format type='qcow2'/><source file='/var/lib/libvirt/images/base.qcow2'/><backingStore/></backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1-data.qcow2'/>
      <target dev='sdb' bus='sata'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:ab:cd:ef'/>
      <source network='default' portid='x' bridge='virbr0'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:ab:cd:f0'/>
      <source bridge='br-prod'/>
      <model type='e1000e'/>
      <rom enabled='no'/>
    </interface>
  </devices>
</domain>`;

describe("the VM spec derived from a libvirt domain's XML (agent config without spec:)", () => {
  it("memory, vCPUs, machine, the replicated disks (diskId = target) and NICs; the first disk boots", () => {
    expect(specFromDomainXml(VIRT_MANAGER)).toEqual({
      problems: [],
      spec: {
        machine: "pc-q35-7.2",
        cpus: 2,
        memoryMiB: 2048,
        disks: [
          { diskId: "vda", bus: "virtio", bootIndex: 0 },
          { diskId: "sdb", bus: "ide" },
        ],
        nics: [
          { id: "nic0", model: "virtio-net-pci", mac: "52:54:00:ab:cd:ef", network: "default" },
          { id: "nic1", model: "e1000e", mac: "52:54:00:ab:cd:f0", network: "br-prod", pxe: false },
        ],
        extraArgs: [],
      },
    });
  });

  it("per-device boot order is kept; the site's own libvirt launcher XML reads back to its spec", () => {
    const spec = {
      machine: "pc",
      cpus: 1,
      memoryMiB: 64,
      disks: [
        { diskId: "hda", bus: "ide" as const },
        { diskId: "vda", bus: "virtio" as const, bootIndex: 0 },
      ],
      nics: [],
      extraArgs: [],
    };
    const xml = domainXml({
      domain: "d",
      spec,
      diskImages: { hda: "/i/a.qcow2", vda: "/i/b.qcow2" },
      serialLogPath: "/i/s.log",
      network: "isolated",
      domainType: "qemu",
      owner: { siteDir: "/s", lifetime: "dies-with-site" },
      runAs: { uid: 0, gid: 0 },
    });
    expect(specFromDomainXml(xml).spec).toEqual(spec);
  });

  it("what the spec cannot describe gives no spec, and says why", () => {
    const scsi = VIRT_MANAGER.replace("<target dev='sdb' bus='sata'/>", "<target dev='sdb' bus='scsi'/>").replace("<model type='e1000e'/>", "<model type='ne2k_pci'/>");
    const r = specFromDomainXml(scsi);
    expect(r.spec).toBeUndefined();
    expect(r.problems).toEqual([
      "disk sdb: bus scsi has no counterpart in the spec (virtio, ide/sata); write the agent config's spec: by hand",
      expect.stringMatching(/^interface 52:54:00:ab:cd:f0: model ne2k_pci has no counterpart/),
    ]);
    expect(specFromDomainXml(VIRT_MANAGER.replace("<vcpu placement='static'>2</vcpu>", "")).problems[0]).toMatch(/^cpus: must be an integer/);
  });
});
