import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Server, credentials, status, type ChannelCredentials, type ServerDuplexStream, type ServiceError } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { getCodec } from "../../../src/codec/index.js";
import { CompressionCodec } from "../../../src/gen/qreplica/v1/common.js";
import {
  RejectReason,
  ReplicationServiceClient,
  ReplicationServiceService,
  ResumeHint,
  type ReplicateRequest,
  type ReplicateResponse,
} from "../../../src/gen/qreplica/v1/replication.js";
import {
  ChecksumMismatchError,
  ChunkRejectedError,
  certificateIdentity,
  channelCredentials,
  createCa,
  decodeExtentChunk,
  encodeExtentChunk,
  grpcChannelOptions,
  siteDial,
  grpcServerOptions,
  issueCertificate,
  loadSiteCredentials,
  peerIdentity,
  serverCredentials,
  toChunkRejected,
  writeWithBackpressure,
  type CertificateIdentity,
  type DecodedChunk,
  type ExtentPiece,
  type IssuedFiles,
  type SiteCredentials,
} from "../../../src/transport/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const MiB = 1024 * 1024;
const tmp = makeTmpDir("qr-mtls-");
const files: Record<string, IssuedFiles> = {};
let caFile = "";
const creds = (name: string): SiteCredentials => loadSiteCredentials({ caFile: files[name]!.caFile, certFile: files[name]!.certFile, keyFile: files[name]!.keyFile });
/** An impostor trusts the real CA (so it accepts its peer) but presents another CA's certificate. */
const impostor = (name: string): SiteCredentials => ({
  ca: readFileSync(caFile),
  cert: readFileSync(files[name]!.certFile),
  key: readFileSync(files[name]!.keyFile),
  identity: certificateIdentity(readFileSync(files[name]!.certFile)),
});

beforeAll(async () => {
  const ca = await createCa({ dir: join(tmp.path, "ca"), name: "qreplica test CA", days: 2 });
  const otherCa = await createCa({ dir: join(tmp.path, "other-ca"), name: "another CA", days: 2 });
  caFile = ca.certFile;
  const sans = ["localhost", "127.0.0.1"];
  files["site-b"] = await issueCertificate({ caDir: ca.dir, name: "site-b", dir: join(tmp.path, "b"), sans, days: 2 });
  files["site-a"] = await issueCertificate({ caDir: ca.dir, name: "site-a", dir: join(tmp.path, "a"), sans, days: 2 });
  // Impostors carry the real names and addresses; only their issuer differs.
  files["fake-a"] = await issueCertificate({ caDir: otherCa.dir, name: "site-a", dir: join(tmp.path, "fa"), sans, days: 2 });
  files["fake-b"] = await issueCertificate({ caDir: otherCa.dir, name: "site-b", dir: join(tmp.path, "fb"), sans, days: 2 });
});
afterAll(() => tmp.cleanup());

/** A replica-side test handler: authenticates, acks Hello, decodes chunks, acks CycleEnd. */
class TestReplica {
  readonly server = new Server(grpcServerOptions);
  handlerRuns = 0;
  peers: CertificateIdentity[] = [];
  decoded: DecodedChunk[] = [];
  refused: ChunkRejectedError[] = [];
  /** Sessions end in errors when a test closes the client first; kept, not left unhandled. */
  sessionErrors: unknown[] = [];
  address = "";

  async start(identity: string | SiteCredentials): Promise<void> {
    this.server.addService(ReplicationServiceService, {
      replicate: (call: ServerDuplexStream<ReplicateRequest, ReplicateResponse>) => {
        this.session(call).catch((err: unknown) => this.sessionErrors.push(err));
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync("127.0.0.1:0", serverCredentials(typeof identity === "string" ? creds(identity) : identity), (err, p) => (err ? reject(err) : resolve(p))),
    );
    this.address = `127.0.0.1:${port}`;
  }

  private async session(call: ServerDuplexStream<ReplicateRequest, ReplicateResponse>): Promise<void> {
    this.handlerRuns++;
    this.peers.push(peerIdentity(call));
    for await (const req of call as AsyncIterable<ReplicateRequest>) {
      const body = req.body;
      if (body?.$case === "hello") {
        await writeWithBackpressure(call, {
          body: {
            $case: "helloAck",
            value: {
              generation: body.value.generation,
              protocolVersion: 1,
              replicaSiteId: "site-b",
              lastCommittedCycleSequence: 0n,
              resumeHint: ResumeHint.RESUME_HINT_INITIAL_REPLICATION,
              maxChunkBytes: 4 * MiB,
              acceptedCodecs: [CompressionCodec.COMPRESSION_CODEC_NONE, CompressionCodec.COMPRESSION_CODEC_ZSTD],
              acceptedChecksumAlgorithms: [],
              resyncReason: "",
              resyncDigest: 0,
            },
          },
        });
      } else if (body?.$case === "extentChunk") {
        try {
          this.decoded.push(decodeExtentChunk(body.value, { maxChunkBytes: 4 * MiB }));
        } catch (err) {
          if (!(err instanceof ChunkRejectedError)) throw err;
          this.refused.push(err);
          await writeWithBackpressure(call, { body: { $case: "chunkRejected", value: toChunkRejected(err) } });
        }
      } else if (body?.$case === "cycleEnd") {
        await writeWithBackpressure(call, {
          body: { $case: "cycleAck", value: { generation: body.value.generation, cycleSequence: body.value.cycleSequence, recoveryPointId: "rp-1" } },
        });
      }
    }
    call.end();
  }
}

const replicas: TestReplica[] = [];
const clients: Array<{ close(): void }> = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  for (const r of replicas.splice(0)) r.server.forceShutdown();
});

async function replica(identity: string | SiteCredentials = "site-b"): Promise<TestReplica> {
  const r = new TestReplica();
  replicas.push(r);
  await r.start(identity);
  return r;
}

function connect(address: string, channelCreds: ChannelCredentials) {
  const client = new ReplicationServiceClient(address, channelCreds, grpcChannelOptions);
  clients.push(client);
  const call = client.replicate({ deadline: Date.now() + 20_000 });
  const responses = (call as AsyncIterable<ReplicateResponse>)[Symbol.asyncIterator]();
  const next = async (): Promise<ReplicateResponse> => {
    const r = await responses.next();
    if (r.done) throw new Error("the replica ended the stream");
    return r.value;
  };
  return { call, next };
}

const hello: ReplicateRequest = {
  body: {
    $case: "hello",
    value: {
      protocolVersion: 1,
      sourceSiteId: "site-a",
      agentId: "kvm1",
      vmId: "vm-1",
      generation: 4n,
      disks: [],
      supportedCodecs: [],
      supportedChecksumAlgorithms: [],
      vmSpecJson: "",
      trackingLost: [],
      resyncMode: 0,
      resyncDigests: [],
      policyName: "",
      configuredIntervalSeconds: 0,
      configuredCompressionLevel: 0,
      upstreamFailover: "",
      initialReplication: "",
    },
  },
};

/** Opens a session as far as Hello goes and returns the gRPC status code the client ends with. */
async function refusedWith(address: string, channelCreds: ChannelCredentials): Promise<number> {
  const { call, next } = connect(address, channelCreds);
  await writeWithBackpressure(call, hello).catch(() => undefined);
  const err = (await next().then(
    () => {
      throw new Error("the session was accepted");
    },
    (e: unknown) => e,
  )) as ServiceError;
  return err.code;
}

describe("ReplicationService over mutual TLS", () => {
  it("lets in a client with a certificate from the same CA and tells the server who it is", async () => {
    const r = await replica();
    const { call, next } = connect(r.address, channelCredentials(creds("site-a"), { expectedServerIdentity: "site-b" }));
    await writeWithBackpressure(call, hello);
    const ack = await next();
    expect(ack.body?.$case).toBe("helloAck");
    call.end();
    expect(r.peers.map((p) => p.commonName)).toEqual(["site-a"]);
    expect(r.peers[0]!.fingerprintSha256).toBe(certificateIdentity(readFileSync(files["site-a"]!.certFile)).fingerprintSha256);
  });

  it("refuses a client whose certificate comes from another CA, before any handler runs", async () => {
    const r = await replica();
    expect(await refusedWith(r.address, channelCredentials(impostor("fake-a")))).toBe(status.UNAVAILABLE);
    expect(r.handlerRuns).toBe(0);
  });

  it("refuses a TLS client without a certificate", async () => {
    const r = await replica();
    expect(await refusedWith(r.address, credentials.createSsl(readFileSync(caFile)))).toBe(status.UNAVAILABLE);
    expect(r.handlerRuns).toBe(0);
  });

  it("refuses a plaintext client", async () => {
    const r = await replica();
    expect(await refusedWith(r.address, credentials.createInsecure())).toBe(status.UNAVAILABLE);
    expect(r.handlerRuns).toBe(0);
  });

  it("the client refuses a server from another CA, and a server that is not the site it expects", async () => {
    const fake = await replica(impostor("fake-b"));
    expect(await refusedWith(fake.address, channelCredentials(creds("site-a")))).toBe(status.UNAVAILABLE);
    expect(fake.handlerRuns).toBe(0);
    const wrongSite = await replica("site-a");
    expect(await refusedWith(wrongSite.address, channelCredentials(creds("site-b"), { expectedServerIdentity: "site-b" }))).toBe(status.UNAVAILABLE);
    expect(wrongSite.handlerRuns).toBe(0);
  });

  // Node warns only once per process, so the absence of DEP0123 is checked on a CLI process (cliQueries).
  it("dials a site by IP with a placeholder TLS server name, still checking the IP against the certificate and the pinned identity", async () => {
    {
      const r = await replica();
      expect(r.address).toMatch(/^127\.0\.0\.1:\d+$/);
      const ok = siteDial(r.address, creds("site-a"), { expectedServerIdentity: "site-b" });
      const client = new ReplicationServiceClient(r.address, ok.credentials, ok.options);
      clients.push(client);
      const call = client.replicate({ deadline: Date.now() + 20_000 });
      await writeWithBackpressure(call, hello);
      const first = await (call as AsyncIterable<ReplicateResponse>)[Symbol.asyncIterator]().next();
      expect(first.value?.body?.$case).toBe("helloAck");
      call.end();
      // The pin holds on this path too.
      const pinned = siteDial(r.address, creds("site-a"), { expectedServerIdentity: "site-c" });
      const wrong = new ReplicationServiceClient(r.address, pinned.credentials, pinned.options);
      clients.push(wrong);
      const refused = wrong.replicate({ deadline: Date.now() + 20_000 });
      await writeWithBackpressure(refused, hello).catch(() => undefined);
      const err = await (refused as AsyncIterable<ReplicateResponse>)
        [Symbol.asyncIterator]()
        .next()
        .then(
          () => undefined,
          (e: ServiceError) => e,
        );
      expect(err?.code).toBe(status.UNAVAILABLE);
    }
  });

  it("carries encoded chunks intact and catches a flipped checksum byte on the replica", async () => {
    const r = await replica();
    const { call, next } = connect(r.address, channelCredentials(creds("site-a")));
    await writeWithBackpressure(call, hello);
    expect((await next()).body?.$case).toBe("helloAck");

    const text = Buffer.from("replicated block contents, highly compressible\n".repeat(100_000)).subarray(0, 4 * MiB);
    const extents: ExtentPiece[] = [
      { kind: "data", offset: 0, length: text.length, data: text },
      { kind: "data", offset: 4 * MiB, length: MiB, data: randomBytes(MiB) },
      { kind: "zero", offset: 5 * MiB, length: 1024 * MiB },
      // Beyond 4 GiB: offsets must survive as uint64.
      { kind: "data", offset: 5 * 1024 * MiB + 512, length: 4096, data: randomBytes(4096) },
    ];
    const encodeOpts = { generation: 4n, cycleSeq: 1n, diskId: "disk-0", codec: getCodec("zstd"), level: 1 };
    const codecs: CompressionCodec[] = [];
    for (const e of extents) {
      const chunk = encodeExtentChunk(e, encodeOpts);
      if (chunk.payload?.$case === "data") codecs.push(chunk.payload.value.codec);
      await writeWithBackpressure(call, { body: { $case: "extentChunk", value: chunk } });
    }
    expect(codecs).toEqual([CompressionCodec.COMPRESSION_CODEC_ZSTD, CompressionCodec.COMPRESSION_CODEC_NONE, CompressionCodec.COMPRESSION_CODEC_NONE]);

    const tampered = encodeExtentChunk({ kind: "data", offset: 64 * MiB, length: text.length, data: text }, encodeOpts);
    tampered.checksum[0] = tampered.checksum[0]! ^ 0x01;
    await writeWithBackpressure(call, { body: { $case: "extentChunk", value: tampered } });
    const rejected = await next();
    expect(rejected.body?.$case).toBe("chunkRejected");
    if (rejected.body?.$case !== "chunkRejected") return;
    expect(rejected.body.value).toMatchObject({ diskId: "disk-0", offset: BigInt(64 * MiB), reason: RejectReason.REJECT_REASON_CHECKSUM_MISMATCH });
    expect(r.refused).toHaveLength(1);
    expect(r.refused[0]).toBeInstanceOf(ChecksumMismatchError);
    expect(r.refused[0]!.message).toContain(`offset ${64 * MiB}, length ${4 * MiB}`);

    await writeWithBackpressure(call, {
      body: { $case: "cycleEnd", value: { generation: 4n, cycleSequence: 1n, extentCount: 4n, dataBytes: 0n, zeroBytes: 0n, wireBytes: 0n, comparedBytes: 0n } },
    });
    expect((await next()).body?.$case).toBe("cycleAck");
    call.end();

    expect(r.decoded).toHaveLength(extents.length);
    extents.forEach((sent, i) => {
      const got = r.decoded[i]!;
      expect({ kind: got.kind, offset: got.offset, length: got.length }).toEqual({ kind: sent.kind, offset: sent.offset, length: sent.length });
      if (sent.kind === "data") expect(got.kind === "data" && got.data.equals(sent.data)).toBe(true);
    });
  });
});
