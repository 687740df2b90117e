/**
 * The site's HTTP/2 window growth (src/transport/windowTuner.ts) over real sockets: through a
 * 50 ms, 1 Gbit/s delay line (the benchmarks' link) a sender held back by the 8 MiB starting
 * window makes the receiver grow it, and the sender sees the new window in SETTINGS; windows
 * stay within the maximum. Only the direction is asserted, not a rate: a busy machine may make
 * anything slower.
 */
import { connect, createServer, type ClientHttp2Session, type Http2Server, type Http2Session } from "node:http2";
import { afterEach, describe, expect, it } from "vitest";
import { startDelayLine, type DelayLine } from "../../../bench/lib/delayLine.js";
import { MAX_STREAM_WINDOW_BYTES, SITE_WINDOW_TUNING, STREAM_WINDOW_BYTES, tuneSessionWindows, type WindowTuner } from "../../../src/transport/index.js";
import { waitFor } from "../../helpers/processes.js";

const MiB = 1024 * 1024;
const open: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (open.length) await open.pop()!();
});

async function receiverBehind(rttMs: number): Promise<{ address: string; tuners: WindowTuner[]; received: () => number }> {
  const tuners: WindowTuner[] = [];
  let received = 0;
  const server: Http2Server = createServer({ settings: { initialWindowSize: STREAM_WINDOW_BYTES } });
  server.on("session", (s: Http2Session) => {
    s.setLocalWindowSize(2 * STREAM_WINDOW_BYTES);
    tuners.push(tuneSessionWindows(s, SITE_WINDOW_TUNING));
  });
  server.on("stream", (stream) => {
    stream.on("data", (d: Buffer) => (received += d.length));
    stream.on("end", () => {
      stream.respond({ ":status": 200 });
      stream.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  open.push(() => new Promise<void>((r) => server.close(() => r())));
  const a = server.address();
  const target = `127.0.0.1:${typeof a === "object" && a ? a.port : 0}`;
  if (rttMs === 0) return { address: target, tuners, received: () => received };
  const line: DelayLine = await startDelayLine(target, { rttMs, bitsPerSecond: 1e9 });
  open.push(() => line.close());
  return { address: line.address, tuners, received: () => received };
}

describe("HTTP/2 receive windows grow on a long fat pipe", () => {
  it("through 50 ms at 1 Gbit/s the 8 MiB stream window grows, up to the maximum, and the sender is told", async () => {
    const r = await receiverBehind(50);
    const client: ClientHttp2Session = connect(`http://${r.address}`);
    open.push(() => void client.destroy());
    await new Promise<void>((resolve, reject) => {
      client.once("remoteSettings", () => resolve());
      client.once("error", reject);
    });
    expect(client.remoteSettings.initialWindowSize).toBe(STREAM_WINDOW_BYTES);
    const stream = client.request({ ":method": "POST", ":path": "/" });
    stream.on("response", () => stream.resume());
    const chunk = Buffer.alloc(MiB, 0x61);
    let sent = 0;
    // Send until the window grew (or 256 MiB went out: then the assertion below fails).
    while (sent < 256 * MiB && r.tuners[0]!.streamWindow === STREAM_WINDOW_BYTES) {
      sent += chunk.length;
      if (!stream.write(chunk)) await new Promise((d) => stream.once("drain", d));
    }
    stream.end();
    const grown = r.tuners[0]!.streamWindow;
    expect(grown).toBeGreaterThan(STREAM_WINDOW_BYTES);
    expect(grown).toBeLessThanOrEqual(MAX_STREAM_WINDOW_BYTES);
    await waitFor("the sender to see the grown window", () => (client.remoteSettings.initialWindowSize === grown ? true : undefined), 10_000);
    await waitFor("every byte to arrive", () => (r.received() === sent ? true : undefined), 60_000);
  }, 120_000);

  it("an idle connection is pinged only as it opens and keeps its starting window", async () => {
    const r = await receiverBehind(0);
    const client = connect(`http://${r.address}`);
    open.push(() => void client.destroy());
    let pings = 0;
    client.on("ping", () => pings++);
    await new Promise<void>((resolve) => client.once("remoteSettings", () => resolve()));
    // Several probe periods with nothing sent.
    await new Promise((d) => setTimeout(d, SITE_WINDOW_TUNING.probeMs * 4));
    expect(pings).toBeLessThanOrEqual(1);
    expect(r.tuners[0]!.streamWindow).toBe(STREAM_WINDOW_BYTES);
  });
});
