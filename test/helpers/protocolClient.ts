/**
 * A test-only client of the site's data plane: opens one Replicate stream with the credentials a
 * test chooses and sends hand-built Hello / CycleBegin / ExtentChunk / CycleEnd / CycleAbort
 * messages, so tests can play a well-behaved agent, a broken one or an attacker, and observe the
 * site's typed responses and the call's final gRPC status.
 */
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { getCodec } from "../../src/codec/index.js";
import { ChecksumAlgorithm, CompressionCodec, Consistency, CycleKind } from "../../src/gen/qreplica/v1/common.js";
import {
  type ChunkDigest,
  CycleAbort,
  CycleBegin,
  CycleEnd,
  Hello,
  ReplicationServiceClient,
  type ExtentChunk,
  type ReplicateRequest,
  type ReplicateResponse,
} from "../../src/gen/qreplica/v1/replication.js";
import { channelCredentials, encodeExtentChunk, grpcChannelOptions, loadSiteCredentials, type ExtentPiece } from "../../src/transport/index.js";

export type ResponseCase = NonNullable<ReplicateResponse["body"]>["$case"];
export type ResponseOf<K extends ResponseCase> = Extract<NonNullable<ReplicateResponse["body"]>, { $case: K }>["value"];
export type DiskSpec = { diskId: string; sizeBytes: number };

/** Mutual-TLS credentials from PEM files, cross-checked as an agent loads them. */
export function fileCredentials(files: { caFile: string; certFile: string; keyFile: string }): grpc.ChannelCredentials {
  return channelCredentials(loadSiteCredentials(files));
}

/**
 * Credentials that trust `caFile` (so the client accepts the real site) but present whatever
 * certificate and key are given, e.g. one issued by another CA; no cross-check is made.
 */
export function rawCredentials(caFile: string, cert?: { certFile: string; keyFile: string }): grpc.ChannelCredentials {
  const ca = readFileSync(caFile);
  if (!cert) return grpc.credentials.createSsl(ca);
  return grpc.credentials.createSsl(ca, readFileSync(cert.keyFile), readFileSync(cert.certFile));
}

export class StreamEndedError extends Error {
  constructor(readonly status: grpc.StatusObject) {
    super(`the Replicate stream ended with ${grpc.status[status.code]} (${status.code}): ${status.details}`);
  }
}

export interface HelloOptions {
  vmId: string;
  generation: number | bigint;
  disks: DiskSpec[];
  sourceSiteId?: string;
  agentId?: string;
  protocolVersion?: number;
  /** The agent config's `policy:` (bound at this Hello when the site has no binding yet). */
  policyName?: string;
  /** The chunk digests offered for a resync (none: SHA-256 only). */
  resyncDigests?: ChunkDigest[];
}

export interface CycleBeginOptions {
  vmId: string;
  generation: number | bigint;
  seq: number | bigint;
  kind: "initial" | "incremental" | "resync";
  disks: DiskSpec[];
  cutoffAt?: Date;
  consistency?: "crash" | "application";
}

export interface CycleTotals {
  extents: number;
  dataBytes: number;
  zeroBytes: number;
  wireBytes: number;
}

export const msg = {
  hello(o: HelloOptions): ReplicateRequest {
    return {
      body: {
        $case: "hello",
        // fromPartial: fields this client does not set keep their proto3 defaults.
        value: Hello.fromPartial({
          protocolVersion: o.protocolVersion ?? 1,
          sourceSiteId: o.sourceSiteId ?? "site-a",
          agentId: o.agentId ?? "site-a",
          vmId: o.vmId,
          generation: BigInt(o.generation),
          disks: o.disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeBytes) })),
          supportedCodecs: [CompressionCodec.COMPRESSION_CODEC_ZSTD, CompressionCodec.COMPRESSION_CODEC_NONE],
          supportedChecksumAlgorithms: [ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256],
          policyName: o.policyName ?? "",
          resyncDigests: o.resyncDigests ?? [],
        }),
      },
    };
  },
  cycleBegin(o: CycleBeginOptions): ReplicateRequest {
    const kind = { initial: CycleKind.CYCLE_KIND_INITIAL, incremental: CycleKind.CYCLE_KIND_INCREMENTAL, resync: CycleKind.CYCLE_KIND_RESYNC }[o.kind];
    return {
      body: {
        $case: "cycleBegin",
        value: CycleBegin.fromPartial({
          vmId: o.vmId,
          generation: BigInt(o.generation),
          cycleSequence: BigInt(o.seq),
          kind,
          cutoffTime: o.cutoffAt ?? new Date(),
          consistency: o.consistency === "application" ? Consistency.CONSISTENCY_APPLICATION : Consistency.CONSISTENCY_CRASH,
          disks: o.disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeBytes) })),
        }),
      },
    };
  },
  chunk(chunk: ExtentChunk): ReplicateRequest {
    return { body: { $case: "extentChunk", value: chunk } };
  },
  cycleEnd(generation: number | bigint, seq: number | bigint, totals: CycleTotals): ReplicateRequest {
    return {
      body: {
        $case: "cycleEnd",
        value: CycleEnd.fromPartial({
          generation: BigInt(generation),
          cycleSequence: BigInt(seq),
          extentCount: BigInt(totals.extents),
          dataBytes: BigInt(totals.dataBytes),
          zeroBytes: BigInt(totals.zeroBytes),
          wireBytes: BigInt(totals.wireBytes),
        }),
      },
    };
  },
  cycleAbort(generation: number | bigint, seq: number | bigint, message = "aborted by the test client"): ReplicateRequest {
    return { body: { $case: "cycleAbort", value: CycleAbort.fromPartial({ generation: BigInt(generation), cycleSequence: BigInt(seq), message }) } };
  },
};

/** Valid wire chunks (zstd where it helps, SHA-256) for pieces of one disk. */
export function encodeChunks(pieces: ExtentPiece[], o: { generation: number | bigint; seq: number | bigint; diskId: string }): ExtentChunk[] {
  const codec = getCodec("zstd");
  return pieces.map((p) => encodeExtentChunk(p, { generation: o.generation, cycleSeq: o.seq, diskId: o.diskId, codec, level: 1 }));
}

/** What CycleEnd must announce for these chunks, counted as the site counts them. */
export function totalsOf(chunks: ExtentChunk[]): CycleTotals {
  const t: CycleTotals = { extents: 0, dataBytes: 0, zeroBytes: 0, wireBytes: 0 };
  for (const c of chunks) {
    t.extents++;
    if (c.payload?.$case === "data") {
      t.dataBytes += c.length;
      t.wireBytes += c.payload.value.data.length;
    } else {
      t.zeroBytes += c.length;
    }
  }
  return t;
}

/** A copy of a valid chunk with one byte of its checksum flipped: the replica must refuse it. */
export function withFlippedChecksum(chunk: ExtentChunk, byte = 0): ExtentChunk {
  const checksum = Buffer.from(chunk.checksum);
  checksum[byte] = checksum[byte]! ^ 0xff;
  return { ...chunk, checksum };
}

/** One Replicate stream to a site. */
export class ProtocolClient {
  readonly client: ReplicationServiceClient;
  readonly call: grpc.ClientDuplexStream<ReplicateRequest, ReplicateResponse>;
  /** Resolves with the call's final status, whatever it is (never rejects). */
  readonly status: Promise<grpc.StatusObject>;
  private readonly queue: ReplicateResponse[] = [];
  private readonly waiters: Array<() => void> = [];
  private ended: grpc.StatusObject | undefined;
  private streamEnded = false;
  readonly errors: Error[] = [];

  constructor(address: string, credentials: grpc.ChannelCredentials, opts: { deadlineMs?: number } = {}) {
    this.client = new ReplicationServiceClient(address, credentials, grpcChannelOptions);
    this.call = this.client.replicate({ deadline: Date.now() + (opts.deadlineMs ?? 60_000) });
    this.call.on("data", (r: ReplicateResponse) => {
      this.queue.push(r);
      this.wake();
    });
    // Non-OK statuses are also emitted as 'error'; kept so they are never unhandled.
    this.call.on("error", (err: Error) => this.errors.push(err));
    this.call.on("end", () => {
      this.streamEnded = true;
      this.wake();
    });
    this.status = new Promise((resolve) =>
      this.call.on("status", (s: grpc.StatusObject) => {
        this.ended = s;
        this.wake();
        resolve(s);
      }),
    );
  }

  /** Writes one message, waiting for 'drain' when the stream is full; never throws on a closed stream. */
  async send(req: ReplicateRequest): Promise<boolean> {
    if (this.call.destroyed || this.call.writableEnded || this.ended) return false;
    if (this.call.write(req)) return true;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.call.off("drain", done);
        this.call.off("close", done);
        resolve();
      };
      this.call.on("drain", done);
      this.call.on("close", done);
    });
    return true;
  }

  async sendAll(reqs: ReplicateRequest[]): Promise<void> {
    for (const r of reqs) await this.send(r);
  }

  /** The next response; rejects with StreamEndedError when the stream ends first. */
  async next(timeoutMs = 30_000): Promise<ReplicateResponse> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = this.queue.shift();
      if (r) return r;
      if (this.ended || this.streamEnded) {
        const s = this.ended ?? (await this.status);
        throw new StreamEndedError(s);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no response from the site within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** The next response, which must be of kind `kind`; anything else fails with what it was. */
  async expect<K extends ResponseCase>(kind: K, timeoutMs?: number): Promise<ResponseOf<K>> {
    const r = await this.next(timeoutMs);
    if (r.body?.$case !== kind) {
      throw new Error(
        `expected ${kind}, got ${r.body?.$case ?? "an empty response"}: ${JSON.stringify(r.body?.value, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v))}`,
      );
    }
    return r.body.value as ResponseOf<K>;
  }

  /** Responses already received and not yet consumed. */
  pending(): ReplicateResponse[] {
    return [...this.queue];
  }

  /** Hello, then the HelloAck (throws with the rejection when it is refused). */
  async hello(o: HelloOptions): Promise<ResponseOf<"helloAck">> {
    await this.send(msg.hello(o));
    return this.expect("helloAck");
  }

  /**
   * Sends a whole cycle (CycleBegin, chunks, CycleEnd with totals computed from `chunks` unless
   * given) without waiting in between, as a pipelining agent does. Responses are read separately.
   */
  async sendCycle(begin: CycleBeginOptions, chunks: ExtentChunk[], totals?: CycleTotals): Promise<void> {
    await this.send(msg.cycleBegin(begin));
    for (const c of chunks) await this.send(msg.chunk(c));
    await this.send(msg.cycleEnd(begin.generation, begin.seq, totals ?? totalsOf(chunks)));
  }

  /** Half-closes the stream (no more requests) and waits for the final status. */
  async finish(timeoutMs = 15_000): Promise<grpc.StatusObject> {
    if (!this.call.writableEnded) this.call.end();
    return this.waitStatus(timeoutMs);
  }

  async waitStatus(timeoutMs = 15_000): Promise<grpc.StatusObject> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.status,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`the call did not end within ${timeoutMs} ms (unread responses: ${this.queue.map((r) => r.body?.$case).join(", ") || "none"})`)),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    if (!this.ended) this.call.cancel();
    this.client.close();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}
