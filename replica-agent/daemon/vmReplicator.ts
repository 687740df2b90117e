import { agentMetrics } from "./agentMetrics.js";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "../../src/common/logger.js";
import { ENABLE_UNACKNOWLEDGED } from "../../src/model/index.js";
import { CompressionCodec, ChecksumAlgorithm } from "../../src/gen/qreplica/v1/common.js";
import { ChunkDigest, RejectReason, ResumeHint, ResyncMode, type PlannedFailoverRequested } from "../../src/gen/qreplica/v1/replication.js";
import { blake3Installed } from "../../src/common/chunkDigest.js";
import { ReplicationClient, currentCredentials, siteDial, type SiteCredentials } from "../../src/transport/index.js";
import { IothreadDiskError, ScratchSpaceLowError, SnapshotBrokenError, type CaptureCycle } from "../capture/index.js";
import { openReplicationSource, type CycleCapture, type ReplicationSource } from "./replicationSource.js";
import type { AgentVmConfig } from "./agentConfig.js";
import { CyclePolicy } from "./cyclePolicy.js";
import { SiteBandwidth } from "./bandwidth.js";
import { bandwidthAt } from "../../src/policy/windows.js";
import { ResponseQueue } from "./responseQueue.js";
import { CycleRefusedError, send, sendCycle, type ReplicateStream } from "./cycleSender.js";
import { stopForPlannedFailover } from "./plannedFailover.js";
import { clearExportState, exportInitialCycle, loadExportState } from "./mediaExport.js";
import { CycleScheduler, type CycleSlot, type VmSchedule } from "./cycleScheduler.js";

const PROTOCOL_VERSION = 1;

export type ReplicatorStatus =
  | "starting"
  | "connecting"
  | "initial-replication"
  | "replicating"
  | "resync-required"
  | "resynchronising"
  | "waiting-for-operator"
  | "waiting-for-schedule"
  | "waiting-for-import"
  | "waiting-for-seed"
  | "refused-stale"
  | "refused"
  | "stopped";

interface VmReplicationState {
  generation: number;
  replicaSite: string;
}

interface HelloAnswer {
  generation: number;
  hint: ResumeHint;
  lastCycleSeq: number;
  resyncReason: string;
}

/** Change tracking the capture layer could not vouch for, per disk, as Hello reports it. */
function trackingLost(capture: CycleCapture): Array<{ diskId: string; code: string; reason: string }> {
  return (capture.report?.disks ?? [])
    .filter((d) => d.status !== "ok")
    .map((d) => ({
      diskId: d.diskId,
      // An enable whose ack never came is told apart: the site lets an interrupted initial replication go on by itself.
      code:
        d.unacknowledgedEnableSeq !== undefined
          ? ENABLE_UNACKNOWLEDGED
          : d.status === "not-enabled"
            ? "NOT_ENABLED"
            : /inconsistent/.test(d.reason ?? "")
              ? "BITMAP_INCONSISTENT"
              : /missing/.test(d.reason ?? "")
                ? "BITMAP_MISSING"
                : "TRACKING_LOST",
      reason: d.reason ?? (d.status === "not-enabled" ? "no change tracking on this agent (first start, or its state directory was lost)" : "change tracking lost"),
    }));
}

/**
 * Replicates one VM: connects to QEMU and the replica site, runs the initial replication, then a
 * cycle every interval. A cycle is confirmed to the capture layer only after the site's ack;
 * anything else aborts it, which keeps its changes for the next cycle. Reconnects with backoff.
 */
export class VmReplicator {
  status: ReplicatorStatus = "starting";
  lastError: string | undefined;
  cyclesConfirmed = 0;
  private stopped = false;
  private readonly wake = new AbortController();
  private readonly stateFile: string;
  /** When this VM's cycles start (the agent's scheduler: grid, spread, in-flight limit). */
  readonly schedule: VmSchedule;
  /** What cycles run with: the site's effective policy, or this VM's config while the site sends none. */
  readonly policy: CyclePolicy;
  /** Shared with every VM of this agent replicating to the same site. */
  private readonly bandwidth: SiteBandwidth;

  constructor(
    private readonly vm: AgentVmConfig,
    private readonly siteId: string,
    private readonly stateDir: string,
    private readonly tls: SiteCredentials,
    private readonly logger: Logger,
    scheduler: CycleScheduler = new CycleScheduler(1),
  ) {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    this.stateFile = join(stateDir, `${vm.id}.replication.json`);
    // A group's members share their slots' phase: their cycles are due together and cut together.
    this.schedule = scheduler.schedule(vm.id, { kind: "interval", seconds: vm.intervalSeconds }, vm.group?.id);
    this.policy = new CyclePolicy(vm, logger, (f) => this.schedule.setFrequency(f));
    this.bandwidth = SiteBandwidth.for(vm.replicaSite);
  }

  stop(): void {
    this.stopped = true;
    this.wake.abort();
  }

  async run(): Promise<void> {
    agentMetrics.declare(this.vm.id);
    let backoffMs = 500;
    while (!this.stopped) {
      try {
        await this.session(() => (backoffMs = 500));
      } catch (err) {
        this.lastError = (err as Error).message;
        if (this.status === "refused-stale" || this.status === "refused") {
          this.logger.error({ vm: this.vm.id, err }, "the replica site refused this primary; replication of this VM stops");
          return;
        }
        this.logger.warn({ vm: this.vm.id, err: (err as Error).message, retryInMs: backoffMs }, "replication interrupted; reconnecting");
      }
      await this.pause(backoffMs);
      backoffMs = Math.min(backoffMs * 2, 30_000);
    }
    this.status = "stopped";
  }

  private async session(onHealthy: () => void): Promise<void> {
    this.status = "connecting";
    // Read at every (re)dial: a certificate renewed on disk is used without restarting the agent.
    const dial = siteDial(this.vm.replicaSite, currentCredentials(this.tls, this.logger), { expectedServerIdentity: this.vm.replicaSiteId });
    const client = new ReplicationClient(this.vm.replicaSite, dial.credentials, dial.options);
    let stream: ReplicateStream | undefined;
    let opened: ReplicationSource | undefined;
    try {
      const source = await openReplicationSource(this.vm, { stateDir: this.stateDir, logger: this.logger, quiesceNow: () => this.policy.quiesceNow() });
      opened = source;
      const capture = source.capture;
      stream = client.replicate();
      const responses = new ResponseQueue(stream, (p) => this.policy.use(p.policy, "push"));
      const lost = trackingLost(capture);
      if (capture.report?.status === "resync-required") this.status = "resync-required";
      const ack = await this.hello(stream, responses, capture, lost).catch(async (err: unknown) => {
        if (this.status === "refused-stale") await this.fence(source);
        throw err;
      });
      onHealthy();
      await this.replicate({ source, capture, stream, responses, ack, tracking: lost.length === 0 });
    } finally {
      stream?.cancel();
      client.close();
      await opened?.close();
    }
  }

  /**
   * Cycles as the site directs: the HelloAck's hint first, then operator notices over the open
   * stream (pause: no cycle, the bitmap keeps every change; resume; resync now).
   */
  private async replicate(x: {
    source: ReplicationSource;
    capture: CycleCapture;
    stream: ReplicateStream;
    responses: ResponseQueue;
    ack: HelloAnswer;
    tracking: boolean;
  }): Promise<void> {
    const { source, capture, stream, responses, ack } = x;
    let tracking = x.tracking;
    let next = ack.hint;
    let planned: PlannedFailoverRequested | undefined;
    void responses.plannedFailover.then((r) => (planned = r));
    // QEMU gone (crashed or stopped) or the stream broken: reconnect now, not at the next cycle.
    const broken = Promise.race([responses.failed, source.gone]);
    broken.catch(() => undefined);
    const cycle = async (c: CaptureCycle, resync: boolean) => {
      const o = { ...this.senderOptions(), resync };
      const started = Date.now();
      try {
        const { totals } = await sendCycle(stream, responses, c, ack.generation, o);
        this.policy.noteAcknowledged(c.consistency);
        agentMetrics.committed(this.vm.id, { readBytes: totals.data, sentBytes: totals.wire, seconds: (Date.now() - started) / 1000 });
        agentMetrics.cutoff(this.vm.id, c);
      } catch (err) {
        agentMetrics.outcome(this.vm.id, err instanceof CycleRefusedError ? "refused" : "failed");
        throw err;
      }
      this.cyclesConfirmed++;
    };
    while (!this.stopped) {
      if (planned) {
        await stopForPlannedFailover({
          source,
          capture,
          stream,
          responses,
          generation: ack.generation,
          req: planned,
          vm: this.vm,
          logger: this.logger,
          sender: this.senderOptions(),
        });
        this.status = "stopped";
        this.stopped = true;
        return;
      }
      const notice = responses.takeNotice();
      if (notice?.$case === "replicationPaused") {
        this.logger.warn({ vm: this.vm.id, reason: notice.value.reason }, "replication paused by an operator: no cycle until resumed (changes are kept)");
        next = ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR;
      } else if (notice?.$case === "replicationResumed") {
        this.logger.info({ vm: this.vm.id }, "replication resumed by an operator");
        next = notice.value.resumeHint;
      } else if (notice?.$case === "resyncRequested") {
        this.logger.info({ vm: this.vm.id, by: notice.value.requestedBy }, "resync requested by an operator");
        next = ResumeHint.RESUME_HINT_RESYNC;
      }
      if (next === ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR) {
        this.status = "waiting-for-operator";
        await Promise.race([responses.noticeArrived(), responses.plannedFailover, broken, this.stoppedSignal()]);
        continue;
      }
      if (next === ResumeHint.RESUME_HINT_RESYNC || next === ResumeHint.RESUME_HINT_INITIAL_REPLICATION) {
        const resync = next === ResumeHint.RESUME_HINT_RESYNC;
        const choice = this.vm.initialReplication;
        if (!resync && this.waitsForSite(ack)) {
          // Nothing to send: the replica site's operator imports the export or registers a seed, and the site tells us.
          await Promise.race([responses.noticeArrived(), responses.plannedFailover, broken, this.stoppedSignal()]);
          continue;
        }
        if (!resync) this.status = "waiting-for-schedule";
        if (!resync && !(await this.policy.untilInitialReplication([responses.plannedFailover, responses.noticeArrived(), broken], this.wake.signal))) continue;
        this.status = resync ? "resynchronising" : "initial-replication";
        const slot = await this.slot(responses, broken, "now");
        if (!slot) continue;
        try {
          // A new bitmap in the same transaction as the cut-off: every later write is tracked.
          const opened = await capture.enable({ minSeq: ack.lastCycleSeq + 1 }).catch((err: unknown) => this.skipped(err, stream, responses, ack.generation));
          if (opened && !resync && choice.kind === "export") {
            await exportInitialCycle(opened, {
              dir: choice.dir,
              vmId: this.vm.id,
              primarySiteId: this.siteId,
              generation: ack.generation,
              stateDir: this.stateDir,
              logger: this.logger,
            });
            tracking = true;
            continue;
          }
          if (opened) {
            await cycle(opened, resync);
            tracking = true;
            next = ResumeHint.RESUME_HINT_INCREMENTAL;
            this.status = "replicating";
          }
        } finally {
          slot.release();
        }
        if (next !== ResumeHint.RESUME_HINT_INCREMENTAL) {
          // Skipped (the scratch is low, say): tried again at this VM's next slot, not at once.
          (await this.slot(responses, broken, "grid"))?.release();
        }
        continue;
      }
      // Incremental cycles need the bitmap; without it the site must hear of the loss in a Hello.
      if (!tracking) throw new Error("change tracking was lost and the replica site expects incremental cycles: reconnecting to report it");
      this.status = "replicating";
      const slot = await this.slot(responses, broken, "grid");
      if (!slot) continue;
      agentMetrics.cyclesInFlight(this.schedule.inFlight);
      if (slot.missed > 0) agentMetrics.slotsMissed(this.vm.id, slot.missed);
      if (slot.missed > 0)
        this.logger.warn(
          { vm: this.vm.id, missed: slot.missed, missedTotal: this.schedule.stats.missed },
          "cycle slots missed: the last cycle overran them or the agent's maxCyclesInFlight was reached; this cycle serves the newest",
        );
      try {
        await this.incremental(source, async () => {
          const opened = await capture.beginCycle().catch((err: unknown) => this.skipped(err, stream, responses, ack.generation));
          if (opened) await cycle(opened, false);
        });
      } finally {
        slot.release();
        agentMetrics.cyclesInFlight(this.schedule.inFlight);
      }
    }
  }

  /**
   * The site wants an initial replication, and this VM's choice says it comes from the site's side:
   * a seed not yet registered there, or an export this agent already wrote (for this generation)
   * that is not yet imported. Says so in the status and the log (once per wait).
   */
  private waitsForSite(ack: HelloAnswer): boolean {
    const choice = this.vm.initialReplication;
    if (choice.kind === "seed") {
      if (this.status !== "waiting-for-seed")
        this.logger.info({ vm: this.vm.id }, `initial replication waits for a seed: run 'qreplica seed ${this.vm.id} --disk DISK=IMAGE' on the replica site`);
      this.status = "waiting-for-seed";
      return true;
    }
    if (choice.kind !== "export") return false;
    const done = loadExportState(this.stateDir, this.vm.id);
    if (!done || done.generation !== ack.generation || done.dir !== choice.dir || done.cycleSeq <= ack.lastCycleSeq) return false;
    if (this.status !== "waiting-for-import")
      this.logger.info(
        { vm: this.vm.id, dir: done.dir, seq: done.cycleSeq, cutoffAt: done.cutoffAt },
        `initial replication exported, waiting for its import: run 'qreplica import ${this.vm.id} --from DIR' on the replica site`,
      );
    this.status = "waiting-for-import";
    return true;
  }

  /** One incremental cycle; a refusal keeps its changes for the next one, a stale generation fences. */
  private async incremental(source: ReplicationSource, run: () => Promise<void>): Promise<void> {
    try {
      await run();
    } catch (err) {
      if (err instanceof SnapshotBrokenError) {
        // The guest is unharmed and every change kept: the next interval tries again.
        this.lastError = `${err.code}: ${err.message}`;
        this.logger.warn({ vm: this.vm.id, code: err.code, err: err.message }, "cycle failed on this host; retrying next interval");
        return;
      }
      if (!(err instanceof CycleRefusedError)) throw err;
      if (err.reason === RejectReason.REJECT_REASON_STALE_GENERATION) {
        this.status = "refused-stale";
        await this.fence(source);
        throw err;
      }
      // The site refused this cycle (e.g. a corrupted chunk, or a pause raced it): its changes are kept.
      this.lastError = err.message;
      this.logger.warn({ vm: this.vm.id, err: err.message }, "cycle refused by the replica site; retrying");
    }
  }

  /**
   * A due cycle that did not start because of this host (its scratch is nearly full, or a disk
   * this QEMU cannot export safely): nothing was cut, every change is kept for the next interval,
   * and the replica site hears why no point arrives (status and health show it; the site records
   * it once, not once per interval).
   * Anything else is rethrown.
   */
  private async skipped(err: unknown, stream: ReplicateStream, responses: ResponseQueue, generation: number): Promise<undefined> {
    if (!(err instanceof ScratchSpaceLowError || err instanceof IothreadDiskError)) throw err;
    agentMetrics.outcome(this.vm.id, "skipped");
    this.lastError = `${err.code}: ${err.message}`;
    this.logger.warn({ vm: this.vm.id, code: err.code, err: err.message }, "cycle skipped on this host; retrying next interval");
    await send(stream, responses, {
      body: { $case: "cycleSkipped", value: { generation: BigInt(generation), code: err.code, message: err.message, skippedAt: new Date() } },
    });
    return undefined;
  }

  private stoppedSignal(): Promise<void> {
    return new Promise((resolve) => {
      if (this.wake.signal.aborted) return resolve();
      this.wake.signal.addEventListener("abort", () => resolve(), { once: true });
    });
  }

  /** Negotiated in Hello/HelloAck; SHA-256 until a site has answered. */
  private chunkChecksum: ChecksumAlgorithm = ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256;

  /**
   * The replica site failed over: this VM is no longer the primary. Pause its vCPUs so it cannot
   * go on as a second primary (split-brain); the operator decides what happens to it.
   */
  private async fence(source: ReplicationSource): Promise<void> {
    try {
      await source.fence();
      this.logger.error({ vm: this.vm.id }, "fenced: the VM was paused because the replica site failed over to a newer generation");
    } catch (err) {
      this.logger.error({ vm: this.vm.id, err }, "could not pause the VM after a stale-generation refusal");
    }
  }

  /** Chunk checksums this agent can compute, the one it prefers first (see common.proto). */
  private offeredChecksums(): ChecksumAlgorithm[] {
    return this.vm.chunkChecksum === "sha256"
      ? [ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256]
      : [ChecksumAlgorithm.CHECKSUM_ALGORITHM_ZSTD_FRAME, ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256];
  }

  /** BLAKE3 first unless the VM asks for SHA-256 or this host has no BLAKE3; SHA-256 always. */
  private offeredResyncDigests(): ChunkDigest[] {
    return this.vm.resyncDigest === "blake3" && blake3Installed() ? [ChunkDigest.CHUNK_DIGEST_BLAKE3, ChunkDigest.CHUNK_DIGEST_SHA256] : [ChunkDigest.CHUNK_DIGEST_SHA256];
  }

  private pickChecksum(accepted: ChecksumAlgorithm[]): ChecksumAlgorithm {
    // A site that lists nothing predates the negotiation and verifies SHA-256 only.
    if (accepted.length === 0) return ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256;
    const pick = this.offeredChecksums().find((a) => accepted.includes(a));
    if (pick === undefined) {
      throw new Error(
        `the replica site accepts none of this agent's chunk checksums (it accepts ${accepted.map((a) => ChecksumAlgorithm[a] ?? a).join(", ")}); upgrade the agent or change vms[].chunkChecksum`,
      );
    }
    return pick;
  }

  private async hello(
    stream: ReplicateStream,
    responses: ResponseQueue,
    capture: CycleCapture,
    lost: Array<{ diskId: string; code: string; reason: string }>,
  ): Promise<HelloAnswer> {
    const saved = this.loadState();
    const disks = capture.report?.disks ?? [];
    await send(stream, responses, {
      body: {
        $case: "hello",
        value: {
          protocolVersion: PROTOCOL_VERSION,
          sourceSiteId: this.siteId,
          agentId: this.siteId,
          vmId: this.vm.id,
          generation: BigInt(saved?.generation ?? this.vm.generation ?? 0),
          disks: disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeBytes) })),
          supportedCodecs: [CompressionCodec.COMPRESSION_CODEC_ZSTD, CompressionCodec.COMPRESSION_CODEC_NONE],
          supportedChecksumAlgorithms: this.offeredChecksums(),
          resyncDigests: this.offeredResyncDigests(),
          // A libvirt domain without a configured spec: the one its XML describes.
          vmSpecJson: this.vm.spec || capture.derivedSpec ? JSON.stringify(this.vm.spec ?? capture.derivedSpec) : "",
          trackingLost: lost,
          resyncMode: this.vm.resync === "manual" ? ResyncMode.RESYNC_MODE_MANUAL : ResyncMode.RESYNC_MODE_AUTOMATIC,
          policyName: this.vm.policy ?? "",
          configuredIntervalSeconds: Math.round(this.vm.intervalSeconds),
          configuredCompressionLevel: this.vm.compressionLevel,
          initialReplication: this.vm.initialReplication.kind,
          upstreamFailover: this.vm.upstreamFailover ?? "",
          ...(this.vm.initialReplication.kind === "at" ? { initialReplicationAt: this.vm.initialReplication.at } : {}),
        },
      },
    });
    const reply = (await responses.next(60_000)).body;
    if (reply?.$case === "helloRejected") {
      this.status = reply.value.reason === RejectReason.REJECT_REASON_STALE_GENERATION ? "refused-stale" : "refused";
      throw new Error(`replica site refused Hello: ${reply.value.message}`);
    }
    if (reply?.$case !== "helloAck") throw new Error(`expected HelloAck, got ${reply?.$case ?? "nothing"}`);
    const generation = Number(reply.value.generation);
    this.noteUnacknowledged(Number(reply.value.lastCommittedCycleSequence), lost.length > 0);
    this.chunkChecksum = this.pickChecksum(reply.value.acceptedChecksumAlgorithms);
    this.policy.use(reply.value.policy, "hello");
    this.saveState({ generation, replicaSite: this.vm.replicaSite });
    const hint = reply.value.resumeHint;
    // The site holds a point: an export this agent wrote has been imported (or superseded).
    if (hint !== ResumeHint.RESUME_HINT_INITIAL_REPLICATION) clearExportState(this.stateDir, this.vm.id);
    if (hint === ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR || hint === ResumeHint.RESUME_HINT_RESYNC) {
      this.logger.warn(
        { vm: this.vm.id, hint: ResumeHint[hint], reason: reply.value.resyncReason, lost },
        hint === ResumeHint.RESUME_HINT_RESYNC ? "the replica site asks for a resync by comparison" : "waiting for an operator (paused, or resync: manual)",
      );
    }
    return { generation, hint, lastCycleSeq: Number(reply.value.lastCommittedCycleSequence), resyncReason: reply.value.resyncReason };
  }

  private senderOptions() {
    return {
      vmId: this.vm.id,
      compressionLevel: this.policy.current.compressionLevel,
      policy: this.policy.label,
      throttle: (bytes: number) => this.bandwidth.take(bytes, bandwidthAt(this.policy.current.bandwidth, new Date()), this.wake.signal),
      checksum: this.chunkChecksum,
      logger: this.logger,
      onEndSent: (seq: number | undefined) => (this.unacknowledgedSeq = seq),
    };
  }

  /**
   * A cycle whose CycleEnd went out but whose ack never came (the site or the link died): its
   * changes were merged back into the recording bitmap and go out again in the next cycle, under
   * a new sequence number. HelloAck says whether the site had committed it: either way nothing is
   * lost and no point is duplicated, but the operator sees which it was.
   */
  private unacknowledgedSeq: number | undefined;

  private noteUnacknowledged(lastCommitted: number, trackingLost: boolean): void {
    const seq = this.unacknowledgedSeq;
    if (seq === undefined) return;
    this.unacknowledgedSeq = undefined;
    if (lastCommitted >= seq && trackingLost) {
      // An initial (or resync) cycle: its bitmap was never confirmed, so a resync compares instead.
      this.logger.warn(
        { vm: this.vm.id, seq, lastCommitted },
        `cycle ${seq} was committed by the replica site before its ack was lost; change tracking was not confirmed, so the next cycle compares the disks with that point and sends only what differs`,
      );
    } else if (lastCommitted >= seq) {
      this.logger.warn(
        { vm: this.vm.id, seq, lastCommitted },
        `cycle ${seq} was committed by the replica site before its ack was lost; its changes are sent again in the next cycle`,
      );
    } else {
      this.logger.warn({ vm: this.vm.id, seq, lastCommitted }, `cycle ${seq} was not committed by the replica site; its changes are sent in the next cycle`);
    }
  }

  private loadState(): VmReplicationState | undefined {
    try {
      return JSON.parse(readFileSync(this.stateFile, "utf8")) as VmReplicationState;
    } catch {
      return undefined;
    }
  }

  private saveState(state: VmReplicationState): void {
    writeFileSync(`${this.stateFile}.tmp`, JSON.stringify(state), { mode: 0o600 });
    renameSync(`${this.stateFile}.tmp`, this.stateFile);
  }

  /**
   * The next cycle's permit ("grid": this VM's next slot; "now": as soon as the in-flight limit
   * allows), or undefined when an operator notice or a planned failover comes first (the loop looks
   * at it) or a stop. A broken stream or QEMU throws, as the session must reconnect.
   */
  private async slot(responses: ResponseQueue, broken: Promise<never>, when: "grid" | "now"): Promise<CycleSlot | undefined> {
    const interrupted = new AbortController();
    const interrupt = () => interrupted.abort();
    this.wake.signal.addEventListener("abort", interrupt, { once: true });
    let failure: unknown;
    void Promise.race([responses.noticeArrived(), responses.plannedFailover, broken]).then(interrupt, (err: unknown) => {
      failure = err;
      interrupt();
    });
    try {
      const slot = when === "grid" ? await this.schedule.next(interrupted.signal) : await this.schedule.now(interrupted.signal);
      if (!slot && failure !== undefined) throw failure;
      return slot;
    } finally {
      this.wake.signal.removeEventListener("abort", interrupt);
    }
  }

  private async pause(ms: number): Promise<void> {
    await sleep(ms, undefined, { signal: this.wake.signal }).catch(() => undefined);
  }
}
