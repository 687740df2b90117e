import { Writable } from "node:stream";
import { Server, ServerCredentials, credentials, type ServerDuplexStream } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { ReplicationServiceClient, ReplicationServiceService, type ReplicateRequest, type ReplicateResponse } from "../../../src/gen/qreplica/v1/replication.js";
import { ChecksumAlgorithm, CompressionCodec } from "../../../src/gen/qreplica/v1/common.js";
import { MAX_STREAM_WINDOW_BYTES, StreamClosedError, grpcChannelOptions, grpcServerOptions, widenServerFlowControl, writeWithBackpressure } from "../../../src/transport/index.js";

const MiB = 1024 * 1024;

function slowWritable(highWaterMark: number, delayMs: number): Writable & { done: number } {
  const w = new Writable({
    objectMode: true,
    highWaterMark,
    write(_chunk, _enc, cb) {
      setTimeout(() => {
        w.done++;
        cb();
      }, delayMs);
    },
  }) as Writable & { done: number };
  w.done = 0;
  return w;
}

describe("writeWithBackpressure on a plain writable", () => {
  it("with maxUnwritten keeps fewer messages queued than the stream's own high-water mark", async () => {
    const w = slowWritable(16, 2);
    let maxQueued = 0;
    for (let i = 0; i < 40; i++) {
      await writeWithBackpressure(w, i, { maxUnwritten: 3 });
      maxQueued = Math.max(maxQueued, w.writableLength);
    }
    expect(maxQueued).toBeLessThanOrEqual(3);
    await new Promise<void>((resolve) => w.end(resolve));
    expect(w.done).toBe(40);
  });

  it("a writer waiting for a write is released with StreamClosedError when the stream is destroyed", async () => {
    const w = new Writable({ objectMode: true, highWaterMark: 16, write() {} }); // never completes a write
    await writeWithBackpressure(w, 1);
    const blocked = writeWithBackpressure(w, 2, { maxUnwritten: 2 });
    setTimeout(() => w.destroy(), 20);
    await expect(blocked).rejects.toBeInstanceOf(StreamClosedError);
  });

  it("keeps at most the high-water mark buffered, even when callers do not await", async () => {
    const w = slowWritable(4, 1);
    let maxBuffered = 0;
    const writes = Array.from({ length: 50 }, (_, i) =>
      writeWithBackpressure(w, i).then(() => {
        maxBuffered = Math.max(maxBuffered, w.writableLength);
      }),
    );
    await Promise.all(writes);
    expect(maxBuffered).toBeLessThanOrEqual(4);
    await new Promise((r) => w.end(r));
    expect(w.done).toBe(50);
  });

  it("rejects a write waiting for drain when the stream is destroyed", async () => {
    const w = slowWritable(1, 1000);
    // Filled behind the helper's back: it must notice and wait before writing, too.
    expect(w.write(1)).toBe(false);
    const pending = writeWithBackpressure(w, 2);
    setTimeout(() => w.destroy(new Error("peer went away")), 10);
    await expect(pending).rejects.toBeInstanceOf(StreamClosedError);
    await expect(pending).rejects.toThrow(/peer went away/);
  });

  it("rejects at once on an ended stream", async () => {
    const w = slowWritable(4, 1);
    w.end();
    await expect(writeWithBackpressure(w, 1)).rejects.toBeInstanceOf(StreamClosedError);
  });
});

describe("writeWithBackpressure on a real grpc-js bidi stream", () => {
  let server: Server | undefined;
  let client: InstanceType<typeof ReplicationServiceClient> | undefined;
  afterEach(() => {
    client?.close();
    server?.forceShutdown();
    client = undefined;
    server = undefined;
  });

  /** A replica that takes ~1 ms per chunk, as one writing to slow storage would. */
  async function slowReplica(onReceived: () => void, widen = false, delayMs = 1): Promise<string> {
    server = new Server(grpcServerOptions);
    server.addService(ReplicationServiceService, {
      replicate: (call: ServerDuplexStream<ReplicateRequest, ReplicateResponse>) => {
        call.on("data", () => {
          onReceived();
          call.pause();
          setTimeout(() => call.resume(), delayMs);
        });
        call.on("end", () => call.end());
      },
    });
    const port = await new Promise<number>((resolve, reject) => server!.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    // As a site does: its receive windows sized for a long fat pipe.
    if (widen) widenServerFlowControl(server);
    return `127.0.0.1:${port}`;
  }

  const chunk: ReplicateRequest = {
    body: {
      $case: "extentChunk",
      value: {
        generation: 1n,
        cycleSequence: 1n,
        diskId: "d0",
        offset: 0n,
        length: MiB,
        payload: { $case: "data", value: { codec: CompressionCodec.COMPRESSION_CODEC_NONE, data: Buffer.alloc(MiB, 7) } },
        checksumAlgorithm: ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256,
        checksum: Buffer.alloc(32),
      },
    },
  };

  async function send(count: number, withBackpressure: boolean, opts: { widen?: boolean; maxUnwritten?: number; delayMs?: number } = {}) {
    let received = 0;
    const address = await slowReplica(() => received++, opts.widen, opts.delayMs);
    client = new ReplicationServiceClient(address, credentials.createInsecure(), grpcChannelOptions);
    const call = client.replicate();
    let drains = 0;
    call.on("drain", () => drains++);
    const ended = new Promise<void>((resolve, reject) => {
      call.on("data", () => undefined);
      call.on("end", resolve);
      call.on("error", reject);
    });
    // Messages the sender has handed over that the replica has not yet taken: what sits in
    // the sender's memory, in grpc-js, in HTTP/2 windows and in socket buffers.
    let sent = 0;
    let maxOutstanding = 0;
    for (let i = 0; i < count; i++) {
      if (withBackpressure) await writeWithBackpressure(call, chunk, opts.maxUnwritten === undefined ? {} : { maxUnwritten: opts.maxUnwritten });
      else call.write(chunk);
      sent++;
      maxOutstanding = Math.max(maxOutstanding, sent - received);
    }
    call.end();
    await ended;
    return { drains, maxOutstanding, received };
  }

  it("300 x 1 MiB: the sender waits for drains and keeps a bounded number of messages in flight", async () => {
    const r = await send(300, true);
    expect(r.received).toBe(300);
    expect(r.drains).toBeGreaterThan(5);
    expect(r.maxOutstanding).toBeLessThanOrEqual(48);
    console.log(`with backpressure: ${r.drains} drains, at most ${r.maxOutstanding} of 300 messages in flight`);
  });

  it("with the site's widened windows a slow replica still bounds the sender: at most the largest stream window plus a few messages", async () => {
    // What an agent does (replicateResponses.ts: maxUnwritten 4) against what a site advertises.
    // 10 ms per 1 MiB (100 MiB/s): slower than the sender, so the window fills.
    const r = await send(120, true, { widen: true, maxUnwritten: 4, delayMs: 10 });
    // The site starts at 8 MiB and may grow to the maximum on a long fat pipe (windowTuner.ts).
    const windowMessages = MAX_STREAM_WINDOW_BYTES / MiB;
    expect(r.received).toBe(120);
    // The window (at most 32 MiB: 32 messages here), what grpc-js decoded ahead of the paused reader and
    // the sender's 4 unwritten: bounded, and below the 120 an unbounded sender would reach.
    expect(r.maxOutstanding).toBeLessThanOrEqual(windowMessages + 48);
    console.log(`widened windows: at most ${r.maxOutstanding} of 120 messages in flight (window at most ${windowMessages} MiB)`);
  });

  it("the same sender without it buffers nearly everything (so the bound above is real)", async () => {
    const r = await send(300, false);
    expect(r.received).toBe(300);
    expect(r.maxOutstanding).toBeGreaterThan(250);
  });
});
