import { describe, expect, it } from "vitest";
import { domainXml, launchOwnerOf, type LaunchNetwork } from "../../../../src/site/launcher/index.js";
import type { VmSpec } from "../../../../src/model/vmSpec.js";

const SPEC: VmSpec = {
  machine: "q35",
  cpus: 2,
  memoryMiB: 256,
  disks: [
    { diskId: "os", bus: "ide", bootIndex: 0 },
    { diskId: "data", bus: "virtio" },
    { diskId: "logs", bus: "ide" },
  ],
  nics: [
    { id: "nic0", model: "virtio-net-pci", mac: "52:54:00:12:34:56", network: "prod" },
    { id: "nic1", model: "e1000", mac: "52:54:00:12:34:57", pxe: false },
  ],
};
const IMAGES = { os: "/srv/run/os.qcow2", data: "/srv/run/data.qcow2", logs: "/srv/run/logs.qcow2" };

const xmlFor = (spec: VmSpec, network: LaunchNetwork = "isolated") =>
  domainXml({
    domain: "qreplica-site-b-vm1",
    spec,
    diskImages: IMAGES,
    serialLogPath: "/srv/run/vm1.serial.log",
    network,
    domainType: "qemu",
    owner: { siteDir: "/srv/site-b & co", lifetime: "outlives-site" },
    runAs: { uid: 998, gid: 997 },
  });

describe("the libvirt domain of a replicated spec", () => {
  it("keeps the spec's hardware: memory, vCPUs, machine, disks on their bus in boot order, COM1 to a file, no default devices", () => {
    const xml = xmlFor(SPEC);
    expect(xml).toMatch(/^<domain type='qemu'/);
    expect(xml).toContain("<memory unit='MiB'>256</memory>");
    expect(xml).toContain("<vcpu>2</vcpu>");
    expect(xml).toContain("machine='q35'>hvm</type></os>");
    // IDE is SATA (AHCI) on q35, as QEMU does there; boot order from bootIndex (libvirt counts from 1).
    expect(xml).toMatch(/<source file='\/srv\/run\/os\.qcow2'\/><target dev='sda' bus='sata'\/><boot order='1'\/><alias name='ua-os'\/>/);
    expect(xml).toMatch(/<source file='\/srv\/run\/data\.qcow2'\/><target dev='vda' bus='virtio'\/><alias name='ua-data'\/>/);
    expect(xml).toMatch(/<target dev='sdb' bus='sata'\/><alias name='ua-logs'\/>/);
    expect(xml).toContain("<serial type='file'><source path='/srv/run/vm1.serial.log'/>");
    expect(xml).toContain("<controller type='usb' model='none'/>");
    expect(xml).toContain("<memballoon model='none'/>");
    expect(xml).not.toMatch(/<graphics|<video/);
    // QEMU runs as the site's user and nothing is relabelled: the site's files stay the site's.
    expect(xml).toContain("<seclabel type='static' model='dac' relabel='no'><label>+998:+997</label></seclabel>");
  });

  it("IDE stays IDE on the pc machine; without a boot index the first hard disk boots", () => {
    const xml = xmlFor({ ...SPEC, machine: "pc", disks: SPEC.disks.map(({ bootIndex: _b, ...d }) => d) });
    expect(xml).toMatch(/<target dev='hda' bus='ide'\/>/);
    expect(xml).toMatch(/<target dev='hdb' bus='ide'\/>/);
    expect(xml).toContain("<boot dev='hd'/></os>");
    expect(xml).not.toContain("<boot order=");
  });

  it("isolated NICs reach nothing: QEMU user networking with restrict=on, never a libvirt interface", () => {
    const xml = xmlFor(SPEC);
    expect(xml).not.toContain("<interface");
    expect(xml).toContain("<qemu:arg value='user,id=net-nic0,restrict=on'/>");
    expect(xml).toContain("<qemu:arg value='virtio-net-pci,netdev=net-nic0,mac=52:54:00:12:34:56,id=nic0'/>");
    expect(xml).toContain("<qemu:arg value='e1000,netdev=net-nic1,mac=52:54:00:12:34:57,id=nic1,romfile='/>");
    expect(xml).toContain("xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'");
  });

  it("a mapped bridge is a libvirt interface with the NIC's MAC and model", () => {
    const xml = xmlFor({ ...SPEC, nics: [SPEC.nics[0]!] }, { mapped: { prod: { type: "bridge", bridge: "br-dr" } } });
    expect(xml).toContain("<interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br-dr'/><model type='virtio'/><alias name='ua-nic0'/></interface>");
    expect(xml).not.toContain("qemu:commandline");
  });

  it("records which site launched it and for how long, read back (escaped) at a restart", () => {
    expect(launchOwnerOf(xmlFor(SPEC))).toEqual({ siteDir: "/srv/site-b & co", lifetime: "outlives-site" });
    // As libvirt hands it back: its own prefix and quotes.
    expect(launchOwnerOf(`<metadata><ns0:launch xmlns:ns0="https://qreplica.dev/xmlns/launch/1" siteDir="/srv/b" lifetime="dies-with-site"/></metadata>`)).toEqual({
      siteDir: "/srv/b",
      lifetime: "dies-with-site",
    });
    expect(launchOwnerOf("<domain><name>someone-elses</name></domain>")).toBeUndefined();
  });
});
