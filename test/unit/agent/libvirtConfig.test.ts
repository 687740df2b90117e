import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadAgentConfig } from "../../../replica-agent/daemon/agentConfig.js";
import { domainDisks } from "../../../replica-agent/capture/libvirt/domainXml.js";
import { parseBackupExports } from "../../../replica-agent/capture/libvirt/libvirtCapture.js";
import { makeTmpDir } from "../../../src/common/tmpDir.js";

const tmp = makeTmpDir("qr-libvirt-config-");
afterAll(() => tmp.cleanup());

function config(vm: string): string {
  const path = join(tmp.path, `agent-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(
    path,
    `siteId: site-a
stateDir: state
tls: { caFile: ca.crt, certFile: a.crt, keyFile: a.key }
vms:
  - id: vm1
    replicaSite: 127.0.0.1:7443
    replicaSiteId: site-b
${vm}`,
  );
  return path;
}

describe("agent config: libvirt-managed VMs", () => {
  it("takes a domain and a URI (default qemu:///system); no QMP socket or disks needed", () => {
    const vm = loadAgentConfig(config("    libvirt: { domain: web1 }\n")).vms[0]!;
    expect(vm.libvirt).toEqual({ domain: "web1", uri: "qemu:///system" });
    const own = loadAgentConfig(config("    libvirt: { domain: web1, uri: 'qemu+unix:///system?socket=/run/x/libvirt-sock' }\n")).vms[0]!;
    expect(own.libvirt?.uri).toBe("qemu+unix:///system?socket=/run/x/libvirt-sock");
  });

  it("refuses unknown keys, a remote URI, an empty domain and QMP settings beside it, naming the path", () => {
    expect(() => loadAgentConfig(config("    libvirt: { domain: web1, domian: x }\n"))).toThrow(/vms\[0\]\.libvirt\.domian: unknown field: did you mean 'domain'/);
    expect(() => loadAgentConfig(config("    libvirt: { domain: web1, uri: 'qemu+ssh://host/system' }\n"))).toThrow(/vms\[0\]\.libvirt\.uri: must be a local QEMU URI/);
    expect(() => loadAgentConfig(config("    libvirt: { domain: '' }\n"))).toThrow(/vms\[0\]\.libvirt\.domain: must name the libvirt domain/);
    expect(() => loadAgentConfig(config("    libvirt: { domain: web1 }\n    qmpSocket: q.sock\n"))).toThrow(/vms\[0\]\.qmpSocket: not used with libvirt.*remove it/);
    // libvirt's backup API has no copy-before-write timeout: the key would do nothing there.
    expect(() => loadAgentConfig(config("    libvirt: { domain: web1 }\n    cbwTimeoutSeconds: 3\n"))).toThrow(
      /vms\[0\]\.cbwTimeoutSeconds: not used with libvirt.*scratchMinFreeMiB.*remove it/,
    );
    // The scratch's minimum free space does apply: the cut-off checks it and the open cycle is watched against half of it.
    expect(loadAgentConfig(config("    libvirt: { domain: web1 }\n    scratchMinFreeMiB: 64\n")).vms[0]!.scratchMinFreeBytes).toBe(64 * 1024 * 1024);
  });
});

describe("libvirt XML", () => {
  it("finds the disks of a domain (top image, not its backing store; no cdrom)", () => {
    const xml = `<domain><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/a.qcow2' index='2'/>
        <backingStore type='file'><format type='qcow2'/><source file='/img/base.qcow2'/></backingStore><target dev='vda' bus='virtio'/></disk>
      <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/b'/><target dev='vdb' bus='virtio'/></disk>
      <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda' bus='sata'/></disk>
    </devices></domain>`;
    expect(domainDisks(xml)).toEqual([
      { target: "vda", source: "/img/a.qcow2", format: "qcow2" },
      { target: "vdb", source: "/dev/vg/b", format: "raw" },
    ]);
  });

  it("reads export names and bitmaps from backup-dumpxml", () => {
    const xml = `<domainbackup mode='pull'><incremental>qreplica-3</incremental><server transport='unix' socket='/s'/><disks>
      <disk name='hda' backup='yes' type='file' backupmode='incremental' incremental='qreplica-3' exportname='hda' exportbitmap='backup-hda' index='3'/>
      <disk name='hdb' backup='no'/></disks></domainbackup>`;
    expect([...parseBackupExports(xml)]).toEqual([["hda", { name: "hda", bitmap: "backup-hda" }]]);
  });
});
