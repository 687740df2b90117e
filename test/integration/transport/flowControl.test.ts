import { connect, type ClientHttp2Session } from "node:http2";
import * as grpc from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import {
  CONNECTION_WINDOW_BYTES,
  FlowControlSetupError,
  limitReadAhead,
  REPLICATE_READ_AHEAD_MESSAGES,
  STREAM_WINDOW_BYTES,
  widenServerFlowControl,
} from "../../../src/transport/index.js";
import { waitFor } from "../../helpers/processes.js";

// A plain HTTP/2 client reads what the grpc-js server advertises; TLS plays no part in the windows.
let server: grpc.Server | undefined;
let session: ClientHttp2Session | undefined;

afterEach(async () => {
  session?.destroy();
  await new Promise<void>((resolve) => (server ? server.tryShutdown(() => resolve()) : resolve()));
  server = undefined;
});

async function serve(widen: boolean): Promise<number> {
  server = new grpc.Server();
  const s = server;
  const port = await new Promise<number>((resolve, reject) => s.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  if (widen) widenServerFlowControl(s);
  return port;
}

async function advertised(port: number, waitForConnectionWindow: boolean): Promise<{ streamWindow: number; connectionWindow: number }> {
  const client = connect(`http://127.0.0.1:${port}`);
  session = client;
  await new Promise<void>((resolve, reject) => {
    client.once("remoteSettings", () => resolve());
    client.once("error", reject);
  });
  // The connection-level window arrives as a WINDOW_UPDATE right after SETTINGS.
  const deadline = Date.now() + 2_000;
  while (waitForConnectionWindow && client.state.remoteWindowSize !== undefined && client.state.remoteWindowSize <= 65_535 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
  }
  return { streamWindow: client.remoteSettings.initialWindowSize ?? 65_535, connectionWindow: client.state.remoteWindowSize ?? 0 };
}

describe("HTTP/2 flow control of site servers", () => {
  it("a widened grpc-js server advertises the Replicate stream and connection windows", async () => {
    const port = await serve(true);
    const w = await advertised(port, true);
    expect(w.streamWindow).toBe(STREAM_WINDOW_BYTES);
    expect(w.connectionWindow).toBe(CONNECTION_WINDOW_BYTES);
  });

  it("without it grpc-js keeps HTTP/2's 64 KiB default (what the widening is for)", async () => {
    const port = await serve(false);
    const w = await advertised(port, false);
    expect(w.streamWindow).toBe(65_535);
  });
});

describe("read-ahead of a grpc-js server stream", () => {
  const method = {
    path: "/test.Echo/Stream",
    requestStream: true,
    responseStream: true,
    requestSerialize: (b: Buffer) => b,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b,
    responseDeserialize: (b: Buffer) => b,
  };

  /** A handler that reads nothing: how many of 40 messages does the server queue for it? */
  async function queued(limit: number | undefined): Promise<number> {
    const s = new grpc.Server();
    server = s;
    let call: grpc.ServerDuplexStream<Buffer, Buffer> | undefined;
    s.addService({ stream: method } as unknown as grpc.ServiceDefinition, {
      stream: (c: grpc.ServerDuplexStream<Buffer, Buffer>) => {
        if (limit !== undefined) limitReadAhead(c, limit);
        call = c;
        c.read(0); // starts reading ahead, as the session's iterator does, without consuming
      },
    });
    const port = await new Promise<number>((resolve, reject) => s.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    const Client = grpc.makeGenericClientConstructor({ stream: method }, "Echo");
    const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as { stream(): grpc.ClientDuplexStream<Buffer, Buffer>; close(): void };
    const stream = client.stream();
    stream.on("error", () => undefined);
    for (let i = 0; i < 40; i++) stream.write(Buffer.alloc(1024, i));
    try {
      const expected = limit ?? 16;
      const c = await waitFor("the server to queue messages", () => (call && call.readableLength >= expected ? call : undefined), 10_000, 10);
      // Give it the chance to queue more than it should.
      await new Promise((r) => setTimeout(r, 300));
      return c.readableLength;
    } finally {
      stream.cancel();
      client.close();
    }
  }

  it("limitReadAhead caps the messages queued ahead of the handler (grpc-js alone queues 16)", async () => {
    expect(await queued(undefined)).toBe(16);
    await new Promise<void>((resolve) => (server ? server.tryShutdown(() => resolve()) : resolve()));
    expect(await queued(REPLICATE_READ_AHEAD_MESSAGES)).toBe(REPLICATE_READ_AHEAD_MESSAGES);
  });

  it("refuses a stream that is not an object-mode readable, rather than silently not limiting", () => {
    expect(() => limitReadAhead({}, 2)).toThrow(FlowControlSetupError);
  });
});
