/**
 * The benchmarks' WAN link (bench/lib/delayLine.ts), over real sockets: data arrives whole and in
 * order, no earlier than the one-way delay, and no faster than the link's rate. Only lower bounds
 * are asserted: a busy machine may make anything later, never earlier.
 */
import { randomBytes } from "node:crypto";
import { connect, createServer, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { startDelayLine, type DelayLine } from "../../../bench/lib/delayLine.js";

const open: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (open.length) await open.pop()!();
});

/** An echo server behind a delay line; returns a connected client. */
async function echoThrough(shape: { rttMs: number; bitsPerSecond: number }): Promise<Socket> {
  const server = createServer((s) => s.pipe(s));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  open.push(() => new Promise((r) => server.close(() => r())));
  const a = server.address();
  const line: DelayLine = await startDelayLine(`127.0.0.1:${typeof a === "object" && a ? a.port : 0}`, shape);
  open.push(() => line.close());
  const client = connect({ host: "127.0.0.1", port: Number(line.address.split(":")[1]) });
  open.push(async () => void client.destroy());
  await new Promise<void>((r) => client.once("connect", () => r()));
  return client;
}

function receive(s: Socket, bytes: number): Promise<{ data: Buffer; at: number }> {
  const parts: Buffer[] = [];
  let n = 0;
  return new Promise((resolve) => {
    const on = (d: Buffer) => {
      parts.push(d);
      n += d.length;
      if (n >= bytes) {
        s.off("data", on);
        resolve({ data: Buffer.concat(parts), at: performance.now() });
      }
    };
    s.on("data", on);
  });
}

describe("bench delay line", () => {
  it("an echo takes at least one round-trip time", async () => {
    const client = await echoThrough({ rttMs: 80, bitsPerSecond: 1e9 });
    const started = performance.now();
    const got = receive(client, 5);
    client.write("hello");
    const { data, at } = await got;
    expect(data.toString()).toBe("hello");
    expect(at - started).toBeGreaterThanOrEqual(79);
  });

  it("carries many writes whole and in order, many in flight at once, no faster than the rate", async () => {
    // 2 MiB at 16 Mbit/s each way: at least 1 s of serialisation.
    const client = await echoThrough({ rttMs: 40, bitsPerSecond: 16e6 });
    const payload = randomBytes(2 * 1024 * 1024);
    const started = performance.now();
    const got = receive(client, payload.length);
    for (let i = 0; i < payload.length; i += 4096) client.write(payload.subarray(i, i + 4096));
    const { data, at } = await got;
    expect(data.equals(payload)).toBe(true);
    expect(at - started).toBeGreaterThanOrEqual(1000);
  });
});
