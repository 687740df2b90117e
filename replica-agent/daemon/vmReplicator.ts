import { agentMetrics } from "./agentMetrics.js";
import { mkdirSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "../../src/common/logger.js";
import { ChecksumAlgorithm } from "../../src/gen/qreplica/v1/common.js";
import { ChunkDigest, RejectReason, ResumeHint, type PlannedFailoverRequested } from "../../src/gen/qreplica/v1/replication.js";
import { ReplicationClient, currentCredentials, digestFromWire, siteDial, type SiteCredentials } from "../../src/transport/index.js";
import { IothreadDiskError, ScratchSpaceLowError, SnapshotBrokenError, type CaptureCycle } from "../capture/index.js";
import { openReplicationSource, type CycleCapture, type ReplicationSource } from "./replicationSource.js";
import type { AgentVmConfig } from "./agentConfig.js";
import { CyclePolicy } from "./cyclePolicy.js";
import { SiteBandwidth } from "./bandwidth.js";
import { bandwidthAt } from "../../src/policy/windows.js";
import { ResponseQueue, type Notice } from "./responseQueue.js";
import { CycleRefusedError, send, sendCycle, type ReplicateStream } from "./cycleSender.js";
import { stopForPlannedFailover } from "./plannedFailover.js";
import { clearExportState, exportInitialCycle, initialReplicationWaitsForSite } from "./mediaExport.js";
import { CycleScheduler, type CycleSlot, type VmSchedule } from "./cycleScheduler.js";
import { helloMessage, logUnacknowledgedCycle, pickChecksum, trackingLost, type HelloAnswer } from "./agentHello.js";
import { nextSlot } from "./slotWait.js";
import { ReplicationStateFile } from "./replicationStateFile.js";

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

/** One connection's replication: its stream, what the site said, and where the loop stands. */
interface Session {
  source: ReplicationSource;
  capture: CycleCapture;
  stream: ReplicateStream;
  responses: ResponseQueue;
  ack: HelloAnswer;
  /** Rejects once QEMU is gone or the stream is broken. */
  broken: Promise<never>;
  /** Whether the capture layer's bitmaps cover every change since the last cycle. */
  tracking: boolean;
  /** What the next cycle is: the site's hint, then what operator notices and cycles made of it. */
  next: ResumeHint;
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
  private readonly stateFile: ReplicationStateFile;
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
    this.stateFile = new ReplicationStateFile(stateDir, vm.id);
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
    const { source, stream, responses, ack } = x;
    let planned: PlannedFailoverRequested | undefined;
    void responses.plannedFailover.then((r) => (planned = r));
    // QEMU gone (crashed or stopped) or the stream broken: reconnect now, not at the next cycle.
    const broken = Promise.race([responses.failed, source.gone]);
    broken.catch(() => undefined);
    const s: Session = { ...x, broken, next: ack.hint };
    while (!this.stopped) {
      if (planned) {
        await stopForPlannedFailover({
          source,
          capture: s.capture,
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
      s.next = this.applyNotice(responses.takeNotice(), s.next);
      if (s.next === ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR) {
        this.status = "waiting-for-operator";
        await this.untilToldOrBroken(s);
        continue;
      }
      if (s.next === ResumeHint.RESUME_HINT_RESYNC || s.next === ResumeHint.RESUME_HINT_INITIAL_REPLICATION) await this.wholeDiskCycle(s);
      else await this.incrementalCycle(s);
    }
  }

  /** The hint after an operator's notice (pause, resume, resync now), logged; unchanged without one. */
  private applyNotice(notice: Notice | undefined, next: ResumeHint): ResumeHint {
    if (notice?.$case === "replicationPaused") {
      this.logger.warn({ vm: this.vm.id, reason: notice.value.reason }, "replication paused by an operator: no cycle until resumed (changes are kept)");
      return ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR;
    }
    if (notice?.$case === "replicationResumed") {
      this.logger.info({ vm: this.vm.id }, "replication resumed by an operator");
      return notice.value.resumeHint;
    }
    if (notice?.$case === "resyncRequested") {
      this.logger.info({ vm: this.vm.id, by: notice.value.requestedBy }, "resync requested by an operator");
      return ResumeHint.RESUME_HINT_RESYNC;
    }
    return next;
  }

  private untilToldOrBroken(s: Session): Promise<unknown> {
    return Promise.race([s.responses.noticeArrived(), s.responses.plannedFailover, s.broken, this.stoppedSignal()]);
  }

  /**
   * The initial replication or a resync by comparison: a new bitmap in the same transaction as
   * the cut-off, then every disk whole (a resync sends only what differs from the replica).
   */
  private async wholeDiskCycle(s: Session): Promise<void> {
    const resync = s.next === ResumeHint.RESUME_HINT_RESYNC;
    const choice = this.vm.initialReplication;
    if (!resync && this.waitsForSite(s.ack)) {
      // Nothing to send: the replica site's operator imports the export or registers a seed, and the site tells us.
      await this.untilToldOrBroken(s);
      return;
    }
    if (!resync) this.status = "waiting-for-schedule";
    if (!resync && !(await this.policy.untilInitialReplication([s.responses.plannedFailover, s.responses.noticeArrived(), s.broken], this.wake.signal))) return;
    this.status = resync ? "resynchronising" : "initial-replication";
    const slot = await this.slot(s.responses, s.broken, "now");
    if (!slot) return;
    try {
      const opened = await s.capture.enable({ minSeq: s.ack.lastCycleSeq + 1 }).catch((err: unknown) => this.skipped(err, s.stream, s.responses, s.ack.generation));
      if (opened && !resync && choice.kind === "export") {
        await exportInitialCycle(opened, {
          dir: choice.dir,
          vmId: this.vm.id,
          primarySiteId: this.siteId,
          generation: s.ack.generation,
          stateDir: this.stateDir,
          logger: this.logger,
        });
        s.tracking = true;
        return;
      }
      if (opened) {
        await this.sendAndCount(s, opened, resync);
        s.tracking = true;
        s.next = ResumeHint.RESUME_HINT_INCREMENTAL;
        this.status = "replicating";
      }
    } finally {
      slot.release();
    }
    if (s.next !== ResumeHint.RESUME_HINT_INCREMENTAL) {
      // Skipped (the scratch is low, say): tried again at this VM's next slot, not at once.
      (await this.slot(s.responses, s.broken, "grid"))?.release();
    }
  }

  /** One incremental cycle at this VM's next slot on the grid. */
  private async incrementalCycle(s: Session): Promise<void> {
    // Incremental cycles need the bitmap; without it the site must hear of the loss in a Hello.
    if (!s.tracking) throw new Error("change tracking was lost and the replica site expects incremental cycles: reconnecting to report it");
    this.status = "replicating";
    const slot = await this.slot(s.responses, s.broken, "grid");
    if (!slot) return;
    agentMetrics.cyclesInFlight(this.schedule.inFlight);
    if (slot.missed > 0) {
      agentMetrics.slotsMissed(this.vm.id, slot.missed);
      this.logger.warn(
        { vm: this.vm.id, missed: slot.missed, missedTotal: this.schedule.stats.missed },
        "cycle slots missed: the last cycle overran them or the agent's maxCyclesInFlight was reached; this cycle serves the newest",
      );
    }
    try {
      await this.incremental(s.source, async () => {
        const opened = await s.capture.beginCycle().catch((err: unknown) => this.skipped(err, s.stream, s.responses, s.ack.generation));
        if (opened) await this.sendAndCount(s, opened, false);
      });
    } finally {
      slot.release();
      agentMetrics.cyclesInFlight(this.schedule.inFlight);
    }
  }

  /** Sends one captured cycle and counts its outcome in the agent's metrics. */
  private async sendAndCount(s: Session, c: CaptureCycle, resync: boolean): Promise<void> {
    const started = Date.now();
    try {
      const { totals } = await sendCycle(s.stream, s.responses, c, s.ack.generation, { ...this.senderOptions(), resync, replicaDigest: s.ack.resyncDigest });
      this.policy.noteAcknowledged(c.consistency);
      agentMetrics.committed(this.vm.id, { readBytes: totals.data, sentBytes: totals.wire, seconds: (Date.now() - started) / 1000 });
      agentMetrics.cutoff(this.vm.id, c);
    } catch (err) {
      agentMetrics.outcome(this.vm.id, err instanceof CycleRefusedError ? "refused" : "failed");
      throw err;
    }
    this.cyclesConfirmed++;
  }

  /** The initial replication comes from the site's side (a seed, an export not yet imported): shown in the status. */
  private waitsForSite(ack: HelloAnswer): boolean {
    const waiting = initialReplicationWaitsForSite(this.vm, this.stateDir, ack, this.status, this.logger);
    if (waiting) this.status = waiting;
    return waiting !== undefined;
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

  private async hello(
    stream: ReplicateStream,
    responses: ResponseQueue,
    capture: CycleCapture,
    lost: Array<{ diskId: string; code: string; reason: string }>,
  ): Promise<HelloAnswer> {
    const saved = this.stateFile.load();
    await send(stream, responses, {
      body: {
        $case: "hello",
        value: helloMessage(this.vm, this.siteId, BigInt(saved?.generation ?? this.vm.generation ?? 0), capture, lost),
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
    this.chunkChecksum = pickChecksum(this.vm, reply.value.acceptedChecksumAlgorithms);
    this.policy.use(reply.value.policy, "hello");
    this.stateFile.save({ generation, replicaSite: this.vm.replicaSite });
    const hint = reply.value.resumeHint;
    // The site holds a point: an export this agent wrote has been imported (or superseded).
    if (hint !== ResumeHint.RESUME_HINT_INITIAL_REPLICATION) clearExportState(this.stateDir, this.vm.id);
    if (hint === ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR || hint === ResumeHint.RESUME_HINT_RESYNC) {
      this.logger.warn(
        { vm: this.vm.id, hint: ResumeHint[hint], reason: reply.value.resyncReason, lost },
        hint === ResumeHint.RESUME_HINT_RESYNC ? "the replica site asks for a resync by comparison" : "waiting for an operator (paused, or resync: manual)",
      );
    }
    // UNSPECIFIED here is an older site that does not say (not SHA-256, as in ResyncHashes).
    const resyncDigest = reply.value.resyncDigest === ChunkDigest.CHUNK_DIGEST_UNSPECIFIED ? undefined : digestFromWire(reply.value.resyncDigest);
    return { generation, hint, lastCycleSeq: Number(reply.value.lastCommittedCycleSequence), resyncReason: reply.value.resyncReason, resyncDigest };
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
    logUnacknowledgedCycle(this.logger, this.vm.id, seq, lastCommitted, trackingLost);
  }

  /** The next cycle's permit, or undefined when an operator notice, a planned failover or a stop comes first (see nextSlot). */
  private slot(responses: ResponseQueue, broken: Promise<never>, when: "grid" | "now"): Promise<CycleSlot | undefined> {
    return nextSlot(this.schedule, this.wake.signal, [responses.noticeArrived(), responses.plannedFailover, broken], when);
  }

  private async pause(ms: number): Promise<void> {
    await sleep(ms, undefined, { signal: this.wake.signal }).catch(() => undefined);
  }
}
