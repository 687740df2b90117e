import { connect, type ClientHttp2Session } from "node:http2";
import * as grpc from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES, widenServerFlowControl } from "../../../src/transport/index.js";

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
