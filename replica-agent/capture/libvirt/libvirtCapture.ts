import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { QreplicaError } from "../../../src/common/errors.js";
import { silentLogger, type Logger } from "../../../src/common/logger.js";
import { NbdClient } from "../../../src/qemu/nbd/index.js";
import { CaptureCycle, DiskCycle, type CycleKind, type TrackingHandoff } from "../captureCycle.js";
import { CaptureNotEnabledError, CycleInProgressError, ResyncRequiredError, SnapshotBrokenError } from "../errors.js";
import { allocationRanges, dirtyRanges, type ExtentReadOptions } from "../extentReader.js";
import { BASE_ALLOCATION, bitmapName, dirtyBitmapContext, PREFIX } from "../naming.js";
import type { ReconcileReport, VmCaptureStatus } from "../vmCapture.js";
import { LibvirtStateFile, type LibvirtCaptureState } from "./checkpointState.js";
import { domainDisks, type DomainDisk } from "./domainXml.js";
import { specFromDomainXml } from "./domainSpec.js";
import type { VmSpec } from "../../../src/model/vmSpec.js";
import { LibvirtCommandError, Virsh, xmlEscape } from "./virsh.js";
import { checkScratchSpace, DEFAULT_SCRATCH_MIN_FREE_BYTES } from "../scratchSpace.js";
import { ScratchGuard } from "./scratchGuard.js";

export interface LibvirtCaptureOptions {
  vmId: string;
  domain: string;
  /** libvirt connection URI, e.g. qemu:///system or qemu+unix:///system?socket=/run/libvirt/libvirt-sock. */
  uri: string;
  stateDir: string;
  /**
   * Where the backup job's scratch files and NBD socket go (default `<stateDir>/scratch`). QEMU
   * creates the socket there: the directory must be writable by the user QEMU runs as.
   */
  scratchDir?: string;
  /**
   * A cut-off needs this much free in the scratch filesystem (default 8 MiB); while a cycle is open,
   * the backup job is ended once less than half of it is left (see ScratchGuard).
   */
  scratchMinFreeBytes?: number;
  read?: ExtentReadOptions & { connections?: number };
  logger?: Logger;
}

export class DomainNotRunningError extends QreplicaError {
  readonly code = "LIBVIRT_DOMAIN_NOT_RUNNING" as const;
  constructor(
    readonly domain: string,
    readonly state: string,
  ) {
    super(`libvirt domain ${domain} is ${state}: cycles wait until it runs again (virsh start ${domain})`);
  }
}

export class DomainDiskFormatError extends QreplicaError {
  readonly code = "LIBVIRT_DISK_NOT_QCOW2" as const;
  constructor(
    readonly domain: string,
    readonly disk: DomainDisk,
  ) {
    super(`libvirt domain ${domain} disk ${disk.target} (${disk.source}) is ${disk.format}: libvirt checkpoints need qcow2 disks; convert it (qemu-img convert -O qcow2)`);
  }
}

const INCONSISTENT = /inconsistent|missing or broken bitmap/i;
const DEFAULT_CONNECTIONS = 4;

/**
 * Changed-block capture of a libvirt domain through libvirt's backup API: each cut-off is a
 * pull-mode `backup-begin` that creates the next checkpoint and exports the point-in-time disks,
 * with the changes since the previous checkpoint as a dirty bitmap, over an NBD unix socket.
 * libvirt keeps every checkpoint's bitmap recording, so a cycle that does not land only deletes its
 * new checkpoint: the previous one still covers every change. The agent keeps the confirmed
 * checkpoint's XML, since libvirt forgets checkpoints when a domain is undefined.
 */
export class LibvirtCapture {
  private readonly virsh: Virsh;
  private readonly stateFile: LibvirtStateFile;
  private state: LibvirtCaptureState;
  private disks: DomainDisk[] = [];
  private domainSpec: ReturnType<typeof specFromDomainXml> | undefined;
  private specProblemsLogged = false;
  private openCycle: CaptureCycle | undefined;
  private scratchGuard: ScratchGuard | undefined;
  private lastReport: ReconcileReport | undefined;
  private readonly logger: Logger;
  readonly scratchDir: string;

  private constructor(private readonly opts: LibvirtCaptureOptions) {
    this.logger = (opts.logger ?? silentLogger).child({ vm: opts.vmId, domain: opts.domain });
    this.virsh = new Virsh(opts.uri);
    this.scratchDir = opts.scratchDir ?? join(opts.stateDir, "scratch");
    mkdirSync(this.scratchDir, { recursive: true, mode: 0o700 });
    this.stateFile = new LibvirtStateFile(opts.stateDir, opts.vmId);
    this.state = this.stateFile.load(opts.vmId, opts.domain);
  }

  static async open(opts: LibvirtCaptureOptions): Promise<LibvirtCapture> {
    const capture = new LibvirtCapture(opts);
    await capture.reconcile();
    return capture;
  }

  get vmId(): string {
    return this.opts.vmId;
  }

  get domain(): string {
    return this.opts.domain;
  }

  get report(): ReconcileReport | undefined {
    return this.lastReport;
  }

  /** The domain's disks as libvirt names them, with their images (for the final-cycle report). */
  get domainDisks(): readonly DomainDisk[] {
    return this.disks;
  }

  /**
   * The VM spec read from the domain's XML at the last discovery (for a config without `spec:`),
   * or undefined when the XML holds something the spec cannot describe (logged once, with why).
   */
  get derivedSpec(): VmSpec | undefined {
    const d = this.domainSpec;
    if (d && !d.spec && !this.specProblemsLogged) {
      this.specProblemsLogged = true;
      this.logger.warn({ problems: d.problems }, "no VM spec derived from the domain XML: the replica site launches a minimal machine; add spec: to the agent config");
    }
    return d?.spec;
  }

  get virshClient(): Virsh {
    return this.virsh;
  }

  async domainState(): Promise<string> {
    return (await this.virsh.run(["domstate", this.opts.domain])).trim();
  }

  /**
   * Ends a backup job an earlier run left open, deletes checkpoints of cycles that never landed,
   * redefines the confirmed checkpoint if libvirt forgot it, and reports whether its bitmap is
   * whole (after a kill -9 of QEMU it is not: resync by comparison).
   */
  async reconcile(): Promise<ReconcileReport> {
    const { domain, vmId } = this.opts;
    const state = await this.domainState();
    if (state !== "running" && state !== "paused") throw new DomainNotRunningError(domain, state);
    await this.discoverDisks();
    await this.abortJob();
    const removedLeftovers: string[] = [];
    let problem: string | undefined;
    let names = await this.ourCheckpoints();
    const keep = this.state.enabled ? this.state.checkpoint : undefined;
    if (keep && !names.includes(keep)) {
      problem = await this.redefine(keep);
      names = await this.ourCheckpoints();
    }
    for (const n of names.filter((x) => x !== keep).reverse()) {
      await this.deleteCheckpoint(n);
      removedLeftovers.push(n);
    }
    if (keep && !problem) problem = await this.bitmapProblem(keep);
    const status: VmCaptureStatus = !this.state.enabled ? "not-enabled" : problem ? "resync-required" : "ok";
    const sizes = new Map<string, number>();
    for (const d of this.disks) sizes.set(d.target, await this.capacity(d.target));
    this.lastReport = {
      vmId,
      status,
      removedLeftovers,
      mergedBitmaps: [],
      disks: this.disks.map((d) => ({
        diskId: d.target,
        node: d.target,
        status,
        sizeBytes: sizes.get(d.target) ?? 0,
        ...(problem ? { reason: problem } : {}),
        ...(status === "not-enabled" && this.state.unacknowledgedEnableSeq !== undefined ? { unacknowledgedEnableSeq: this.state.unacknowledgedEnableSeq } : {}),
        ...(status === "ok" ? { seq: this.state.seq } : {}),
      })),
    };
    if (removedLeftovers.length) this.logger.warn({ removed: removedLeftovers }, "deleted checkpoints of cycles that never landed (the confirmed checkpoint covers their changes)");
    if (status === "resync-required") this.logger.error({ reason: problem }, "resync required");
    return this.lastReport;
  }

  /** A full point-in-time read and a new checkpoint; any earlier tracking of ours is dropped. */
  async enable(opts: { minSeq?: number } = {}): Promise<CaptureCycle> {
    this.assertNoOpenCycle();
    await this.abortJob();
    for (const n of (await this.ourCheckpoints()).reverse()) await this.deleteCheckpoint(n);
    const seq = Math.max(this.state.seq + 1, opts.minSeq ?? 0);
    this.state = { ...this.state, enabled: false, checkpoint: undefined, checkpointXml: undefined, seq, unacknowledgedEnableSeq: seq };
    this.stateFile.save(this.state);
    return this.cutoff("full", seq);
  }

  /** The next cut-off, exporting what changed since the confirmed checkpoint. */
  async beginCycle(): Promise<CaptureCycle> {
    this.assertNoOpenCycle();
    if (!this.state.enabled || !this.state.checkpoint) throw new CaptureNotEnabledError(this.opts.vmId);
    const seq = this.state.seq + 1;
    this.state = { ...this.state, seq };
    this.stateFile.save(this.state);
    return this.cutoff("incremental", seq);
  }

  private async cutoff(kind: CycleKind, seq: number): Promise<CaptureCycle> {
    const { domain, vmId } = this.opts;
    await this.discoverDisks();
    const checkpoint = bitmapName(seq);
    const socket = join(this.scratchDir, `${vmId}.backup.sock`);
    rmSync(socket, { force: true });
    const scratch = (d: DomainDisk) => join(this.scratchDir, `${vmId}-${d.target}.scratch.qcow2`);
    for (const d of this.disks) rmSync(scratch(d), { force: true });
    const minFreeBytes = this.opts.scratchMinFreeBytes ?? DEFAULT_SCRATCH_MIN_FREE_BYTES;
    checkScratchSpace(vmId, this.scratchDir, minFreeBytes);
    const incremental = kind === "incremental" ? `<incremental>${xmlEscape(this.state.checkpoint ?? "")}</incremental>` : "";
    const diskXml = this.disks.map((d) => `<disk name='${xmlEscape(d.target)}' backup='yes' type='file'><scratch file='${xmlEscape(scratch(d))}'/></disk>`).join("");
    const backupXml = `<domainbackup mode='pull'>${incremental}<server transport='unix' socket='${xmlEscape(socket)}'/><disks>${diskXml}</disks></domainbackup>`;
    const checkpointXml = `<domaincheckpoint><name>${checkpoint}</name><disks>${this.disks.map((d) => `<disk name='${xmlEscape(d.target)}' checkpoint='bitmap'/>`).join("")}</disks></domaincheckpoint>`;
    const dirty = kind === "incremental" ? await this.checkpointSizes(this.state.checkpoint ?? "") : new Map<string, number>();
    const cutoffAt = new Date();
    try {
      await this.virsh.withXmlFiles({ backup: backupXml, checkpoint: checkpointXml }, (f) =>
        this.virsh.run(["backup-begin", domain, "--backupxml", f.backup!, "--checkpointxml", f.checkpoint!]),
      );
    } catch (err) {
      if (err instanceof LibvirtCommandError && INCONSISTENT.test(err.detail))
        throw new ResyncRequiredError(vmId, this.disks[0]?.target ?? "?", `checkpoint ${this.state.checkpoint} is inconsistent (${err.detail})`);
      throw err;
    }
    const guard = new ScratchGuard(this.scratchDir, minFreeBytes / 2, (reason) => this.endJobForScratch(seq, reason));
    // Reads fail once the guard ended the job: that is the broken snapshot, not the export's fault.
    const explain = (diskId: string) => (err: unknown) => (guard.tripped ? new SnapshotBrokenError(vmId, diskId, seq, this.scratchDir, guard.tripped, { cause: err }) : err);
    const exports = parseBackupExports(await this.virsh.run(["backup-dumpxml", domain]));
    const diskCycles: DiskCycle[] = [];
    const cycle = new CaptureCycle(
      vmId,
      seq,
      kind,
      cutoffAt,
      "crash",
      diskCycles,
      this.handoff(checkpoint),
      this.logger,
      (o) => this.finished(cycle, o),
      async () => undefined,
    );
    this.openCycle = cycle;
    this.scratchGuard = guard;
    guard.start();
    try {
      for (const d of this.disks) {
        const exp = exports.get(d.target);
        if (!exp) throw new Error(`libvirt's backup job of domain ${domain} exports no disk ${d.target}`);
        const context = kind === "incremental" && exp.bitmap ? dirtyBitmapContext(exp.bitmap) : BASE_ALLOCATION;
        const connect = () => NbdClient.connect({ socketPath: socket, exportName: exp.name, metaContexts: [context] });
        const clients = [await connect()];
        const size = clients[0]!.size;
        const n = clients[0]!.canMultiConn ? Math.max(1, this.opts.read?.connections ?? DEFAULT_CONNECTIONS) : 1;
        for (let i = 1; i < n; i++) clients.push(await connect());
        const ranges = (c: NbdClient) => (context === BASE_ALLOCATION ? allocationRanges(c, context) : dirtyRanges(c, context));
        const dirtyBytes = kind === "full" ? size : (dirty.get(d.target) ?? size);
        diskCycles.push(new DiskCycle(d.target, d.target, size, dirtyBytes, clients, ranges, this.opts.read ?? {}, explain(d.target)));
      }
    } catch (err) {
      await cycle.abort(err).catch((e: unknown) => this.logger.error({ err: e }, "rollback after a failed cut-off failed"));
      throw err;
    }
    this.logger.info({ seq, kind, checkpoint, disks: diskCycles.map((d) => ({ disk: d.diskId, size: d.sizeAtCutoff, dirty: d.dirtyBytes })) }, "cut-off taken (libvirt backup)");
    return cycle;
  }

  /** The scratch ran low while a cycle was open (ScratchGuard): its backup job ends now. */
  private async endJobForScratch(seq: number, reason: string): Promise<void> {
    this.logger.warn({ seq, scratchDir: this.scratchDir, reason }, "scratch nearly full: ending the backup job before it fails the guest's writes");
    await this.abortJob().catch((err: unknown) => this.logger.error({ seq, err }, "could not end the backup job of a nearly full scratch"));
  }

  private async endScratchGuard(): Promise<void> {
    const guard = this.scratchGuard;
    this.scratchGuard = undefined;
    await guard?.end();
  }

  private handoff(checkpoint: string): TrackingHandoff {
    return {
      confirmed: async (cycle) => {
        await this.endScratchGuard();
        await this.abortJob();
        // Kept without its parent: that one is deleted below, and a redefine must not look for it.
        const xml = (await this.virsh.run(["checkpoint-dumpxml", this.opts.domain, checkpoint])).replace(/\s*<parent>[\s\S]*?<\/parent>/, "");
        const previous = this.state.checkpoint;
        const disks = Object.fromEntries(cycle.disks.map((d) => [d.diskId, { sizeAtCutoff: d.sizeAtCutoff, lastCutoffAt: cycle.cutoffAt.toISOString() }]));
        this.state = { ...this.state, enabled: true, checkpoint, checkpointXml: xml, disks, unacknowledgedEnableSeq: undefined };
        this.stateFile.save(this.state);
        // The new checkpoint records from the cut-off on; the old one's changes are on the replica.
        if (previous && previous !== checkpoint) await this.deleteCheckpoint(previous);
      },
      aborted: async (cycle) => {
        await this.endScratchGuard();
        await this.abortJob();
        // The previous checkpoint's bitmap recorded all along: deleting the new one loses nothing.
        await this.deleteCheckpoint(checkpoint).catch((err: unknown) => this.logger.warn({ err, checkpoint }, "could not delete the checkpoint of a cycle that did not land"));
        if (cycle.kind === "full") {
          this.state = { ...this.state, enabled: false, checkpoint: undefined, checkpointXml: undefined };
          this.stateFile.save(this.state);
        }
      },
    };
  }

  private finished(cycle: CaptureCycle, _outcome: "confirmed" | "aborted"): void {
    if (this.openCycle === cycle) this.openCycle = undefined;
    for (const f of [`${this.opts.vmId}.backup.sock`, ...this.disks.map((d) => `${this.opts.vmId}-${d.target}.scratch.qcow2`)]) rmSync(join(this.scratchDir, f), { force: true });
  }

  private async discoverDisks(): Promise<void> {
    const xml = await this.virsh.run(["dumpxml", this.opts.domain]);
    this.domainSpec = specFromDomainXml(xml);
    const disks = domainDisks(xml);
    if (disks.length === 0) throw new Error(`libvirt domain ${this.opts.domain} has no disks to replicate`);
    const bad = disks.find((d) => d.format !== "qcow2");
    if (bad) throw new DomainDiskFormatError(this.opts.domain, bad);
    this.disks = disks;
  }

  /** Our checkpoints, oldest first. */
  private async ourCheckpoints(): Promise<string[]> {
    const out = await this.virsh.run(["checkpoint-list", this.opts.domain, "--name", "--topological"]);
    return out
      .split("\n")
      .map((s) => s.trim())
      .filter((s) => s.startsWith(`${PREFIX}-`));
  }

  /** Redefines a checkpoint libvirt forgot from its saved XML; returns why not if it cannot. */
  private async redefine(name: string): Promise<string | undefined> {
    if (!this.state.checkpointXml) return `checkpoint ${name} is gone from libvirt and its XML was not kept`;
    try {
      // Without the domain definition it was taken under: the domain may come back with a new uuid.
      const xml = this.state.checkpointXml.replace(/\s*<domain\b[\s\S]*<\/domain>/, "");
      await this.virsh.withXmlFiles({ cp: xml }, (f) => this.virsh.run(["checkpoint-create", this.opts.domain, f.cp!, "--redefine", "--redefine-validate"]));
      this.logger.warn({ checkpoint: name }, "libvirt had forgotten the checkpoint (domain undefined and defined again?): redefined it from the saved XML");
      return undefined;
    } catch (err) {
      return `checkpoint ${name} is gone from libvirt and could not be redefined: ${(err as Error).message}`;
    }
  }

  /** libvirt reports a bitmap's size only while it is whole. */
  private async bitmapProblem(checkpoint: string): Promise<string | undefined> {
    const sizes = await this.checkpointSizes(checkpoint);
    const broken = this.disks.filter((d) => !sizes.has(d.target));
    return broken.length
      ? `the bitmap of checkpoint ${checkpoint} is inconsistent or missing on ${broken.map((d) => d.target).join(", ")} (QEMU stopped without storing it, e.g. killed)`
      : undefined;
  }

  private async checkpointSizes(checkpoint: string): Promise<Map<string, number>> {
    const xml = await this.virsh.run(["checkpoint-dumpxml", this.opts.domain, checkpoint, "--size", "--no-domain"]).catch(() => "");
    const sizes = new Map<string, number>();
    for (const m of xml.matchAll(/<disk\b[^>]*\bname='([^']+)'[^>]*\bsize='(\d+)'/g)) sizes.set(m[1]!, Number(m[2]));
    return sizes;
  }

  private async deleteCheckpoint(name: string): Promise<void> {
    try {
      await this.virsh.run(["checkpoint-delete", this.opts.domain, name]);
    } catch (err) {
      // A checkpoint whose bitmap QEMU lost (killed) cannot merge it anywhere: drop libvirt's record.
      this.logger.warn({ checkpoint: name, err: (err as Error).message }, "checkpoint delete failed; deleting its metadata only");
      await this.virsh.run(["checkpoint-delete", this.opts.domain, name, "--metadata"]);
    }
  }

  /** The disk's virtual size as the guest sees it (`virsh domblkinfo`: Capacity). */
  private async capacity(target: string): Promise<number> {
    const out = await this.virsh.run(["domblkinfo", this.opts.domain, target]);
    return Number(/^Capacity:\s+(\d+)/m.exec(out)?.[1] ?? 0);
  }

  private async abortJob(): Promise<void> {
    await this.virsh.run(["domjobabort", this.opts.domain]).catch((err: unknown) => {
      if (!(err instanceof LibvirtCommandError && /no job|not running|no active/i.test(err.detail))) throw err;
    });
  }

  private assertNoOpenCycle(): void {
    if (this.openCycle) throw new CycleInProgressError(this.opts.vmId, this.openCycle.seq);
  }
}

/** exportname and exportbitmap per disk from `virsh backup-dumpxml`. */
export function parseBackupExports(xml: string): Map<string, { name: string; bitmap?: string }> {
  const out = new Map<string, { name: string; bitmap?: string }>();
  for (const m of xml.matchAll(/<disk\b([^>]*)>/g)) {
    const tag = m[1] ?? "";
    const name = /\bname='([^']+)'/.exec(tag)?.[1];
    if (!name || /\bbackup='no'/.test(tag)) continue;
    const exportName = /\bexportname='([^']+)'/.exec(tag)?.[1] ?? name;
    const bitmap = /\bexportbitmap='([^']+)'/.exec(tag)?.[1];
    out.set(name, bitmap ? { name: exportName, bitmap } : { name: exportName });
  }
  return out;
}
