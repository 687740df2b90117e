import type { Logger } from "../../src/common/logger.js";
import { GuestAgentClient } from "../../src/qemu/guestAgent/index.js";
import { QmpClient, queryNamedBlockNodes } from "../../src/qemu/qmp/index.js";
import { GroupCutoff, VmCapture, type CaptureCycle, type ReconcileReport } from "../capture/index.js";
import { LibvirtCapture } from "../capture/libvirt/libvirtCapture.js";
import type { AgentVmConfig } from "./agentConfig.js";
import type { VmSpec } from "../../src/model/vmSpec.js";

/** What the replicator needs of a VM's capture: the start-up report, the initial cut-off, cycles. */
export interface CycleCapture {
  readonly report: ReconcileReport | undefined;
  enable(opts?: { minSeq?: number }): Promise<CaptureCycle>;
  beginCycle(): Promise<CaptureCycle>;
  /** The VM's spec as the capture finds it (a libvirt domain's XML), for a config without `spec:`. */
  readonly derivedSpec?: VmSpec | undefined;
}

/**
 * A protected VM as the replicator drives it: its capture, and the few things done to the VM
 * itself (fence it, stop it for a planned failover's final cycle, end it). A QEMU the agent holds
 * a QMP monitor of, or a libvirt domain.
 */
export interface ReplicationSource {
  readonly capture: CycleCapture;
  /** Rejects when the VM is gone (QEMU exited): the session reconnects at once. */
  readonly gone: Promise<never>;
  /** Pauses the VM's vCPUs (a newer generation failed over: no second primary). */
  fence(): Promise<void>;
  /** Stops the guest for a planned failover's final cycle; returns how ("powerdown" or "pause"). */
  stopForFinalCycle(powerdownTimeoutSeconds: number): Promise<string>;
  /** Runs the guest's vCPUs again after a planned failover's stop (`pause`) that came to nothing. */
  resume(): Promise<void>;
  /** Each disk's image, for the site's record of the stopped primary. */
  diskImages(): Promise<Array<{ diskId: string; imagePath: string }>>;
  /** Ends the VM after its final cycle. */
  quit(): Promise<void>;
  close(): Promise<void>;
}

export async function openReplicationSource(
  vm: AgentVmConfig,
  x: { stateDir: string; logger: Logger; quiesceNow: () => { freezeTimeoutMs: number } | undefined },
): Promise<ReplicationSource> {
  return vm.libvirt ? LibvirtSource.open(vm, x) : QmpSource.open(vm, x);
}

class QmpSource implements ReplicationSource {
  readonly gone: Promise<never>;

  private constructor(
    private readonly vm: AgentVmConfig,
    private readonly qmp: QmpClient,
    private readonly guestAgent: GuestAgentClient | undefined,
    readonly capture: VmCapture,
  ) {
    this.gone = qmp.closed.then(() => Promise.reject(new Error("QEMU's QMP monitor closed (QEMU exited?)")));
    this.gone.catch(() => undefined);
  }

  static async open(vm: AgentVmConfig, x: { stateDir: string; logger: Logger; quiesceNow: () => { freezeTimeoutMs: number } | undefined }): Promise<QmpSource> {
    const qmp = await QmpClient.connect({ socketPath: vm.qmpSocket, logger: x.logger });
    const guestAgent = vm.guestAgentSocket ? new GuestAgentClient({ socketPath: vm.guestAgentSocket, logger: x.logger }) : undefined;
    try {
      const capture = await VmCapture.open({
        vmId: vm.id,
        qmp,
        disks: vm.disks,
        stateDir: x.stateDir,
        scratchDir: vm.scratchDir,
        scratchMinFreeBytes: vm.scratchMinFreeBytes,
        cbwTimeoutSeconds: vm.cbwTimeoutSeconds,
        nbdSocketPath: vm.nbdSocket,
        quiescer: guestAgent,
        quiesceNow: x.quiesceNow,
        ...(vm.group ? { group: GroupCutoff.for(vm.group.id, vm.group.members, vm.group.joinTimeoutMs) } : {}),
        logger: x.logger,
      });
      return new QmpSource(vm, qmp, guestAgent, capture);
    } catch (err) {
      guestAgent?.close();
      await qmp.close();
      throw err;
    }
  }

  async fence(): Promise<void> {
    await this.qmp.execute("stop");
  }

  /** QEMU must run with -no-shutdown to stay up for the final cycle after the guest powers off. */
  async stopForFinalCycle(powerdownTimeoutSeconds: number): Promise<string> {
    let method = "powerdown";
    const shutdown = this.qmp
      .waitForEvent("SHUTDOWN", () => true, powerdownTimeoutSeconds * 1000)
      .then(
        () => true,
        () => false,
      );
    await this.qmp.execute("system_powerdown").catch(() => undefined);
    if (!(await shutdown)) {
      method = "pause";
      await this.qmp.execute("stop");
    }
    if (this.qmp.isClosed) throw new Error("the VM powered off and QEMU exited before the final cycle: run it with -no-shutdown so its last changes can be shipped");
    return method;
  }

  async resume(): Promise<void> {
    await this.qmp.execute("cont");
  }

  async diskImages(): Promise<Array<{ diskId: string; imagePath: string }>> {
    const nodes = await queryNamedBlockNodes(this.qmp);
    return this.vm.disks.map((d) => ({ diskId: d.id, imagePath: nodes.find((n) => n["node-name"] === d.node)?.image.filename ?? "" }));
  }

  async quit(): Promise<void> {
    await this.qmp.execute("quit").catch(() => undefined);
  }

  async close(): Promise<void> {
    this.guestAgent?.close();
    await this.qmp.close();
  }
}

/** How often the agent looks whether a libvirt domain still runs (libvirt has no push to virsh). */
const DOMAIN_POLL_MS = 2_000;

class LibvirtSource implements ReplicationSource {
  readonly gone: Promise<never>;
  private readonly poll: NodeJS.Timeout;

  private constructor(readonly capture: LibvirtCapture) {
    let fail!: (err: Error) => void;
    this.gone = new Promise<never>((_, reject) => (fail = reject));
    this.gone.catch(() => undefined);
    let busy = false;
    this.poll = setInterval(() => {
      if (busy) return;
      busy = true;
      capture
        .domainState()
        .then((s) => {
          if (s !== "running" && s !== "paused") fail(new Error(`libvirt domain ${capture.domain} is ${s}`));
        })
        .catch((err: unknown) => fail(err instanceof Error ? err : new Error(String(err))))
        .finally(() => (busy = false));
    }, DOMAIN_POLL_MS);
    this.poll.unref();
  }

  static async open(vm: AgentVmConfig, x: { stateDir: string; logger: Logger }): Promise<LibvirtSource> {
    const lv = vm.libvirt!;
    const capture = await LibvirtCapture.open({
      vmId: vm.id,
      domain: lv.domain,
      uri: lv.uri,
      stateDir: x.stateDir,
      scratchDir: vm.scratchDir,
      scratchMinFreeBytes: vm.scratchMinFreeBytes,
      logger: x.logger,
    });
    return new LibvirtSource(capture);
  }

  async fence(): Promise<void> {
    await this.capture.virshClient.run(["suspend", this.capture.domain]);
  }

  /**
   * libvirt ends QEMU when the guest powers off, so the final cycle could not be cut: the domain
   * is paused instead (its disks then stay as the final cycle ships them).
   */
  async stopForFinalCycle(): Promise<string> {
    await this.fence();
    return "pause";
  }

  async resume(): Promise<void> {
    await this.capture.virshClient.run(["resume", this.capture.domain]);
  }

  async diskImages(): Promise<Array<{ diskId: string; imagePath: string }>> {
    return this.capture.domainDisks.map((d) => ({ diskId: d.target, imagePath: d.source }));
  }

  async quit(): Promise<void> {
    await this.capture.virshClient.run(["destroy", this.capture.domain]).catch(() => undefined);
  }

  async close(): Promise<void> {
    clearInterval(this.poll);
  }
}
