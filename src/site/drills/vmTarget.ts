/**
 * A launched test VM as a drill's checks see it (checks.ts DrillTarget): QMP for its state and the
 * TCP forward, its serial log file, and its guest agent channel (launchVm `guestAgentChannel`).
 */
import { readFileSync } from "node:fs";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { GuestAgentClient } from "../../qemu/guestAgent/index.js";
import type { VmSpec } from "../../model/vmSpec.js";
import { netdevId, QemuSiteVm, type LaunchedVm, type SiteVm } from "../launcher/index.js";
import { probeForwarded, usernetState, type DrillTarget } from "./checks.js";

export interface ClosableTarget extends DrillTarget {
  close(): void;
}

/**
 * The target for a VM a site launcher runs: the qemu launcher's through its QEMU monitor and guest
 * agent channel; any other (libvirt) through its launcher's running state and its serial log only,
 * so its drills can check `running` and `serialPattern`, and fail the other checks saying why.
 */
export function siteVmTarget(vm: SiteVm, nics: () => VmSpec["nics"], isRunning: () => Promise<boolean>): ClosableTarget {
  if (vm instanceof QemuSiteVm) return launchedVmTarget(vm.launched, nics);
  const unsupported = async (): Promise<never> => {
    throw new Error(`the ${vm.launcher} launcher gives the site no monitor or guest agent channel of the VM: only the running and serialPattern checks work with it today`);
  };
  return {
    async vmStatus() {
      return (await isRunning()) ? { alive: true, status: "running" } : { alive: false, status: `the ${vm.launcher} launcher reports it stopped` };
    },
    serialText: () => readSerial(vm.serialLogPath),
    guestPing: unsupported,
    guestExec: unsupported,
    tcpProbe: unsupported,
    close() {},
  };
}

function readSerial(path: string): string {
  try {
    return readFileSync(path, "latin1");
  } catch {
    return "";
  }
}

/** `nics`: the VM's NICs as launched (read only by the TCP check: its forward goes to the first). */
export function launchedVmTarget(vm: LaunchedVm, nics: () => VmSpec["nics"]): ClosableTarget {
  let agent: GuestAgentClient | undefined;
  const forwards = new Map<number, number>();
  const agentOf = () => {
    if (!vm.guestAgentSocketPath) throw new Error("the test VM has no guest agent channel");
    agent ??= new GuestAgentClient({ socketPath: vm.guestAgentSocketPath, connectTimeoutMs: 2_000, syncTimeoutMs: 2_000 });
    return agent;
  };
  return {
    async vmStatus() {
      if (!vm.proc.running) return { alive: false, status: "QEMU exited" };
      const st = await vm.qmp.execute<{ status: string }>("query-status", undefined, { timeoutMs: 5_000 });
      return { alive: true, status: st.status };
    },
    serialText: () => readSerial(vm.serialLogPath),
    async guestPing(timeoutMs) {
      await agentOf().ping({ timeoutMs });
    },
    async guestExec(argv, timeoutMs) {
      return guestExec(agentOf(), argv, timeoutMs);
    },
    async tcpProbe(guestPort) {
      const nic = nics()[0];
      if (!nic) throw new Error("the VM has no NIC: a TCP port inside the guest cannot be reached");
      let port = forwards.get(guestPort);
      if (port === undefined) {
        port = await freeLocalPort();
        // User networking with restrict=on still honours explicit forwards: only this host port reaches the guest.
        const said = await vm.qmp.humanMonitorCommand(`hostfwd_add ${netdevId(nic)} tcp:127.0.0.1:${port}-:${guestPort}`);
        if (said.trim()) throw new Error(`QEMU refused the forward to guest port ${guestPort}: ${said.trim()}`);
        forwards.set(guestPort, port);
      }
      const hostPort = port;
      return probeForwarded("127.0.0.1", hostPort, async () => usernetState(await vm.qmp.humanMonitorCommand("info usernet"), hostPort));
    },
    close() {
      agent?.close();
    },
  };
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  "out-data"?: string;
  "err-data"?: string;
}

/** guest-exec with its output captured, polled with guest-exec-status until it exits or `timeoutMs` passes. */
export async function guestExec(agent: GuestAgentClient, argv: readonly string[], timeoutMs: number): Promise<{ exitCode: number; output: string }> {
  const [path, ...args] = argv;
  if (!path) throw new Error("the guest command is empty");
  const { pid } = await agent.execute<{ pid: number }>("guest-exec", { path, arg: args, "capture-output": true });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const st = await agent.execute<ExecStatus>("guest-exec-status", { pid });
    if (st.exited) {
      const text = (b64: string | undefined) => (b64 ? Buffer.from(b64, "base64").toString("utf8") : "");
      return { exitCode: st.exitcode ?? (st.signal !== undefined ? 128 + st.signal : -1), output: `${text(st["out-data"])}${text(st["err-data"])}` };
    }
    if (Date.now() > deadline) throw new Error(`${JSON.stringify(argv)} still running after ${timeoutMs} ms`);
    await sleep(200);
  }
}

function freeLocalPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no local port"))));
    });
  });
}
