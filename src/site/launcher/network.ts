import { escapeOpt } from "../../qemu/processes/storageDaemon.js";
import { VmLaunchError } from "./errors.js";
import type { VmNicSpec } from "../../model/vmSpec.js";

/**
 * Where a launched VM's NIC frames go.
 *
 * - `isolated`: QEMU user networking with `restrict=on`, one private instance per NIC. The guest
 *   still gets a DHCP lease (10.0.2.15), so its network stack comes up as in production, but
 *   nothing it sends reaches the host, the outside world or the other NICs: no DNS, no TCP/UDP
 *   beyond DHCP/TFTP, no host forwards. The default for a test failover.
 * - `user`: QEMU user networking (NAT, outbound only); for labs.
 * - `bridge`: a host bridge through `qemu-bridge-helper` (it must allow the bridge in
 *   /etc/qemu/bridge.conf).
 * - `tap`: an existing tap device the operator prepared (no scripts are run).
 */
export type NetworkBackend = { type: "isolated" } | { type: "user" } | { type: "bridge"; bridge: string; helper?: string } | { type: "tap"; ifname: string };

/**
 * `"isolated"` puts every NIC on the isolated backend. `mapped` maps each primary-site network
 * name (`VmNicSpec.network`) to a backend at this site, as Hyper-V's failover TCP/IP and network
 * mapping does; a NIC whose network is not in the map is an error, and a NIC without a network is
 * attached isolated, never to a production network by accident.
 */
export type LaunchNetwork = "isolated" | { mapped: Record<string, NetworkBackend> };

const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;

export function netdevId(nic: VmNicSpec): string {
  return `net-${nic.id}`;
}

/** The backend each NIC gets, or a VmLaunchError naming the unmapped network and the fix. */
export function resolveNicBackends(vmName: string, nics: readonly VmNicSpec[], network: LaunchNetwork): NetworkBackend[] {
  return nics.map((nic, i) => {
    if (network === "isolated" || nic.network === undefined) return { type: "isolated" };
    const backend = Object.hasOwn(network.mapped, nic.network) ? network.mapped[nic.network] : undefined;
    if (!backend) {
      const known = Object.keys(network.mapped);
      throw new VmLaunchError(
        vmName,
        `nics[${i}] (${nic.id}) is on network "${nic.network}", which the launch's network map does not cover ` +
          `(it maps ${known.length > 0 ? known.map((k) => `"${k}"`).join(", ") : "nothing"}); add "${nic.network}" to network.mapped or launch with network "isolated"`,
      );
    }
    if (backend.type === "bridge" && !IFNAME.test(backend.bridge)) {
      throw new VmLaunchError(vmName, `network "${nic.network}" maps to bridge ${JSON.stringify(backend.bridge)}, which is not a Linux interface name (1-15 of A-Z a-z 0-9 _ . -)`);
    }
    if (backend.type === "tap" && !IFNAME.test(backend.ifname)) {
      throw new VmLaunchError(vmName, `network "${nic.network}" maps to tap ${JSON.stringify(backend.ifname)}, which is not a Linux interface name (1-15 of A-Z a-z 0-9 _ . -)`);
    }
    return backend;
  });
}

/** `-netdev` and `-device` arguments for every NIC. */
export function nicArgs(vmName: string, nics: readonly VmNicSpec[], network: LaunchNetwork): string[] {
  const backends = resolveNicBackends(vmName, nics, network);
  const args: string[] = [];
  nics.forEach((nic, i) => {
    const id = netdevId(nic);
    const b = backends[i]!;
    switch (b.type) {
      case "isolated":
        args.push("-netdev", `user,id=${id},restrict=on`);
        break;
      case "user":
        args.push("-netdev", `user,id=${id}`);
        break;
      case "bridge":
        args.push("-netdev", `bridge,id=${id},br=${b.bridge}${b.helper ? `,helper=${escapeOpt(b.helper)}` : ""}`);
        break;
      case "tap":
        args.push("-netdev", `tap,id=${id},ifname=${b.ifname},script=no,downscript=no`);
        break;
    }
    args.push("-device", `${nic.model},netdev=${id},mac=${nic.mac},id=${nic.id}${nic.pxe === false ? ",romfile=" : ""}`);
  });
  return args;
}
