import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { ClientDuplexStream } from "@grpc/grpc-js";
import type { Logger } from "../../src/common/logger.js";
import { CompressionCodec, ChecksumAlgorithm, Consistency, CycleKind } from "../../src/gen/qreplica/v1/common.js";
import { RejectReason, ResumeHint, ResyncMode, type PlannedFailoverRequested, type ReplicateResponse } from "../../src/gen/qreplica/v1/replication.js";
import { GuestAgentClient } from "../../src/qemu/guestAgent/index.js";
import { QmpClient, queryNamedBlockNodes } from "../../src/qemu/qmp/index.js";
import { ReplicationClient, channelCredentials, encodeExtentChunkRequest, grpcChannelOptions, writeWithBackpressure, type OutgoingReplicateRequest, type SiteCredentials } from "../../src/transport/index.js";
import { getCodec } from "../../src/codec/index.js";
import { ScratchSpaceLowError, SnapshotBrokenError, VmCapture, type CaptureCycle } from "../capture/index.js";
import type { AgentVmConfig } from "./agentConfig.js";
import { ResponseQueue } from "./responseQueue.js";
import { differingChunks } from "./differingChunks.js";

const PROTOCOL_VERSION = 1;
const ACK_TIMEOUT_MS = 10 * 60_000;

export type ReplicatorStatus = "starting" | "connecting" | "initial-replication" | "replicating" | "resync-required" | "refused-stale" | "refused" | "stopped";

interface VmReplicationState {
  generation: number;
  replicaSite: string;
}

/** A write that fails as soon as the stream does, instead of waiting for a drain that never comes. */
function send(stream: ClientDuplexStream<OutgoingReplicateRequest, ReplicateResponse>, responses: ResponseQueue, message: OutgoingReplicateRequest): Promise<void> {
  // A few chunks queued beyond the HTTP/2 window keep the link busy; more only cost memory.
  return Promise.race([writeWithBackpressure(stream, message, { maxUnwritten: 4 }), responses.failed]);
}

class CycleRefusedError extends Error {
  constructor(
    readonly reason: RejectReason,
    message: string,
  ) {
    super(message);
  }
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

  constructor(
    private readonly vm: AgentVmConfig,
    private readonly siteId: string,
    private readonly stateDir: string,
    private readonly tls: SiteCredentials,
    private readonly logger: Logger,
  ) {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    this.stateFile = join(stateDir, `${vm.id}.replication.json`);
  }

  stop(): void {
    this.stopped = true;
    this.wake.abort();
  }

  async run(): Promise<void> {
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
    const qmp = await QmpClient.connect({ socketPath: this.vm.qmpSocket, logger: this.logger });
    const guestAgent = this.vm.guestAgentSocket ? new GuestAgentClient({ socketPath: this.vm.guestAgentSocket, logger: this.logger }) : undefined;
    const client = new ReplicationClient(this.vm.replicaSite, channelCredentials(this.tls, { expectedServerIdentity: this.vm.replicaSiteId }), grpcChannelOptions);
    let stream: ClientDuplexStream<OutgoingReplicateRequest, ReplicateResponse> | undefined;
    let open: CaptureCycle | undefined;
    try {
      const capture = await VmCapture.open({
        vmId: this.vm.id,
        qmp,
        disks: this.vm.disks,
        stateDir: this.stateDir,
        scratchDir: this.vm.scratchDir,
        nbdSocketPath: this.vm.nbdSocket,
        quiescer: guestAgent,
        logger: this.logger,
      });
      if (capture.report?.status === "resync-required") {
        this.status = "resync-required";
        throw new Error(`resync required: ${capture.report.disks.map((d) => d.reason).filter(Boolean).join("; ")}`);
      }
      stream = client.replicate();
      const responses = new ResponseQueue(stream);
      const generation = await this.hello(stream, responses, capture).catch(async (err: unknown) => {
        if (this.status === "refused-stale") await this.fence(qmp);
        throw err;
      });
      onHealthy();
      const runCycle = async (cycle: CaptureCycle) => {
        open = cycle;
        await this.sendCycle(stream!, responses, cycle, generation);
        open = undefined;
      };
      if (this.resyncHint) {
        // Reverse replication onto the old primary's disks: compare, send only what differs.
        this.status = "initial-replication";
        const cycle = await capture.enable();
        open = cycle;
        await this.sendCycle(stream, responses, cycle, generation, true);
        open = undefined;
      } else if (capture.report?.status !== "ok" || this.needsInitial) {
        this.status = "initial-replication";
        await runCycle(await capture.enable());
      }
      this.status = "replicating";
      let planned: PlannedFailoverRequested | undefined;
      void responses.plannedFailover.then((r) => (planned = r));
      while (!this.stopped) {
        await Promise.race([this.pause(this.vm.intervalSeconds * 1000), responses.plannedFailover]);
        if (planned) {
          await this.stopForPlannedFailover(qmp, capture, stream, responses, generation, planned);
          return;
        }
        if (this.stopped) break;
        try {
          await runCycle(await capture.beginCycle());
        } catch (err) {
          if (err instanceof SnapshotBrokenError || err instanceof ScratchSpaceLowError) {
            // The guest is unharmed and every change kept: the next interval tries again.
            this.lastError = `${err.code}: ${err.message}`;
            this.logger.warn({ vm: this.vm.id, code: err.code, err: err.message }, "cycle failed on this host; retrying next interval");
            continue;
          }
          if (!(err instanceof CycleRefusedError)) throw err;
          if (err.reason === RejectReason.REJECT_REASON_STALE_GENERATION) {
            this.status = "refused-stale";
            await this.fence(qmp);
            throw err;
          }
          // The site refused this cycle (e.g. a corrupted chunk): its changes are kept, try again.
          this.lastError = err.message;
          this.logger.warn({ vm: this.vm.id, err: err.message }, "cycle refused by the replica site; retrying");
        }
      }
    } finally {
      const cycle = open as CaptureCycle | undefined;
      if (cycle && !cycle.finished) await cycle.abort(new Error("replication session ended")).catch(() => undefined);
      stream?.cancel();
      client.close();
      guestAgent?.close();
      await qmp.close();
    }
  }

  /**
   * Planned failover: the guest gets `powerdown_timeout` to power off (QEMU must run with
   * -no-shutdown to stay up for the final cycle), else its vCPUs are paused; then a final cycle
   * cut after the stop ships the last changes, the site hears that the VM stopped, and QEMU quits.
   */
  private async stopForPlannedFailover(
    qmp: QmpClient,
    capture: VmCapture,
    stream: ClientDuplexStream<OutgoingReplicateRequest, ReplicateResponse>,
    responses: ResponseQueue,
    generation: number,
    req: PlannedFailoverRequested,
  ): Promise<void> {
    let method = "powerdown";
    const shutdown = qmp.waitForEvent("SHUTDOWN", () => true, req.powerdownTimeoutSeconds * 1000).then(() => true, () => false);
    await qmp.execute("system_powerdown").catch(() => undefined);
    if (!(await shutdown)) {
      method = "pause";
      await qmp.execute("stop");
    }
    if (qmp.isClosed) throw new Error("the VM powered off and QEMU exited before the final cycle: run it with -no-shutdown so its last changes can be shipped");
    const stoppedAt = new Date();
    const cycle = await capture.beginCycle();
    await this.sendCycle(stream, responses, cycle, generation);
    const nodes = await queryNamedBlockNodes(qmp);
    const disks = this.vm.disks.map((d) => ({ diskId: d.id, imagePath: nodes.find((n) => n["node-name"] === d.node)?.image.filename ?? "" }));
    await send(stream, responses, {
      body: { $case: "primaryStopped", value: { generation: BigInt(generation), stoppedAt, finalCycleSequence: BigInt(cycle.seq), method, disks } },
    });
    await qmp.execute("quit").catch(() => undefined);
    this.status = "stopped";
    this.stopped = true;
    this.logger.info({ vm: this.vm.id, method, finalCycle: cycle.seq }, "planned failover: VM stopped after its final cycle; this primary is done");
  }

  private needsInitial = false;
  private resyncHint = false;
  /** Negotiated in Hello/HelloAck; SHA-256 until a site has answered. */
  private chunkChecksum: ChecksumAlgorithm = ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256;

  /**
   * The replica site failed over: this VM is no longer the primary. Pause its vCPUs so it cannot
   * go on as a second primary (split-brain); the operator decides what happens to it.
   */
  private async fence(qmp: QmpClient): Promise<void> {
    try {
      await qmp.execute("stop");
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

  private async hello(stream: ClientDuplexStream<OutgoingReplicateRequest, ReplicateResponse>, responses: ResponseQueue, capture: VmCapture): Promise<number> {
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
          vmSpecJson: this.vm.spec ? JSON.stringify(this.vm.spec) : "",
          trackingLost: [],
          resyncMode: ResyncMode.RESYNC_MODE_AUTOMATIC,
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
    this.noteUnacknowledged(Number(reply.value.lastCommittedCycleSequence));
    this.chunkChecksum = this.pickChecksum(reply.value.acceptedChecksumAlgorithms);
    this.saveState({ generation, replicaSite: this.vm.replicaSite });
    this.needsInitial = reply.value.resumeHint === ResumeHint.RESUME_HINT_INITIAL_REPLICATION;
    this.resyncHint = reply.value.resumeHint === ResumeHint.RESUME_HINT_RESYNC;
    return generation;
  }

  private async sendCycle(stream: ClientDuplexStream<OutgoingReplicateRequest, ReplicateResponse>, responses: ResponseQueue, cycle: CaptureCycle, generation: number, resync = false): Promise<void> {
    const gen = BigInt(generation);
    const seq = BigInt(cycle.seq);
    const codec = getCodec("zstd");
    const started = Date.now();
    try {
      await send(stream, responses, {
        body: {
          $case: "cycleBegin",
          value: {
            vmId: this.vm.id,
            generation: gen,
            cycleSequence: seq,
            kind: resync ? CycleKind.CYCLE_KIND_RESYNC : cycle.kind === "full" ? CycleKind.CYCLE_KIND_INITIAL : CycleKind.CYCLE_KIND_INCREMENTAL,
            cutoffTime: cycle.cutoffAt,
            consistency: cycle.consistency === "application" ? Consistency.CONSISTENCY_APPLICATION : Consistency.CONSISTENCY_CRASH,
            disks: cycle.disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeAtCutoff) })),
          },
        },
      });
      const seedHashes = resync ? await this.receiveSeedHashes(responses, cycle) : undefined;
      const resyncStats = { comparedBytes: 0, differingBytes: 0 };
      const totals = { extents: 0, data: 0, zero: 0, wire: 0 };
      for (const disk of cycle.disks) {
        const seed = seedHashes?.get(disk.diskId);
        const extents = seed ? differingChunks(disk, seed.chunkBytes, seed.hashes, resyncStats) : disk.extents();
        for await (const extent of extents) {
          const early = responses.poll();
          if (early) this.throwIfRejected(early, cycle.seq);
          const chunk = encodeExtentChunkRequest(extent, { generation: gen, cycleSeq: seq, diskId: disk.diskId, codec, level: this.vm.compressionLevel, checksum: this.chunkChecksum });
          totals.extents++;
          if (extent.kind === "data") totals.data += extent.length;
          else totals.zero += extent.length;
          totals.wire += chunk.wireBytes;
          await send(stream, responses, chunk.request);
        }
      }
      this.unacknowledgedSeq = cycle.seq;
      await send(stream, responses, {
        body: {
          $case: "cycleEnd",
          value: { generation: gen, cycleSequence: seq, extentCount: BigInt(totals.extents), dataBytes: BigInt(totals.data), zeroBytes: BigInt(totals.zero), wireBytes: BigInt(totals.wire), comparedBytes: BigInt(resyncStats.comparedBytes) },
        },
      });
      for (;;) {
        const r = await responses.next(ACK_TIMEOUT_MS);
        this.throwIfRejected(r, cycle.seq);
        if (r.body?.$case === "cycleAck" && Number(r.body.value.cycleSequence) === cycle.seq) break;
      }
      this.unacknowledgedSeq = undefined;
      await cycle.confirm();
      this.cyclesConfirmed++;
      this.logger.info({ vm: this.vm.id, seq: cycle.seq, kind: resync ? "resync" : cycle.kind, vcpuPauseMs: cycle.vcpuPauseMs, ...totals, ...(resync ? resyncStats : {}), ms: Date.now() - started }, "cycle acknowledged by the replica site");
    } catch (err) {
      if (!cycle.finished) await cycle.abort(err);
      if (err instanceof SnapshotBrokenError) {
        // The site records it as a failed cycle with this message (status, events).
        await send(stream, responses, { body: { $case: "cycleAbort", value: { generation: gen, cycleSequence: seq, message: `${err.code}: ${err.message}` } } }).catch(() => undefined);
      }
      throw err;
    }
  }

  /** The replica's chunk hashes of its seed, per disk, sent right after a RESYNC CycleBegin. */
  private async receiveSeedHashes(responses: ResponseQueue, cycle: CaptureCycle): Promise<Map<string, { chunkBytes: number; hashes: Buffer[] }>> {
    const seeds = new Map<string, { chunkBytes: number; hashes: Buffer[] }>();
    const done = new Set<string>();
    while (done.size < cycle.disks.length) {
      const r = await responses.next(10 * 60_000);
      this.throwIfRejected(r, cycle.seq);
      if (r.body?.$case !== "resyncHashes") continue;
      const h = r.body.value;
      const entry = seeds.get(h.diskId) ?? { chunkBytes: h.chunkBytes, hashes: [] };
      if (Number(h.firstChunk) !== entry.hashes.length) throw new Error(`seed hashes of disk ${h.diskId} out of order`);
      entry.hashes.push(...h.hashes);
      seeds.set(h.diskId, entry);
      if (h.last) done.add(h.diskId);
    }
    return seeds;
  }

  /**
   * A cycle whose CycleEnd went out but whose ack never came (the site or the link died): its
   * changes were merged back into the recording bitmap and go out again in the next cycle, under
   * a new sequence number. HelloAck says whether the site had committed it: either way nothing is
   * lost and no point is duplicated, but the operator sees which it was.
   */
  private unacknowledgedSeq: number | undefined;

  private noteUnacknowledged(lastCommitted: number): void {
    const seq = this.unacknowledgedSeq;
    if (seq === undefined) return;
    this.unacknowledgedSeq = undefined;
    if (lastCommitted >= seq) {
      this.logger.warn({ vm: this.vm.id, seq, lastCommitted }, `cycle ${seq} was committed by the replica site before its ack was lost; its changes are sent again in the next cycle`);
    } else {
      this.logger.warn({ vm: this.vm.id, seq, lastCommitted }, `cycle ${seq} was not committed by the replica site; its changes are sent in the next cycle`);
    }
  }

  private throwIfRejected(r: ReplicateResponse, seq: number): void {
    const body = r.body;
    if (body?.$case === "cycleRejected" && Number(body.value.cycleSequence) === seq) {
      throw new CycleRefusedError(body.value.reason, `cycle ${seq} refused: ${body.value.message}`);
    }
    if (body?.$case === "chunkRejected") this.logger.warn({ vm: this.vm.id, seq, message: body.value.message }, "chunk refused by the replica site");
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

  private async pause(ms: number): Promise<void> {
    await sleep(ms, undefined, { signal: this.wake.signal }).catch(() => undefined);
  }
}
