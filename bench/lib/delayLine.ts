import { connect, createServer, type Server, type Socket } from "node:net";

/** A link's shape: one-way delay (RTT / 2) and bandwidth, the same in both directions. */
export interface LinkShape {
  rttMs: number;
  bitsPerSecond: number;
}

/** Bytes a direction may hold (in flight on the "wire" plus queued) before its reader is paused: a router's buffer. */
const QUEUE_LIMIT_FACTOR = 2;

/**
 * One direction of the link: chunks leave in order, each after its serialisation time at the
 * link's rate (behind the chunks before it) plus the one-way delay. A delay line, not
 * stop-and-wait: many chunks are in flight at once, as on a real long fat pipe. The source is
 * paused while more than twice the bandwidth-delay product is held, so memory stays bounded and
 * TCP's own flow control sees a full link.
 */
class Direction {
  private readonly queue: Array<{ due: number; data: Buffer }> = [];
  private held = 0;
  private wireFree = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly limit: number;

  constructor(
    private readonly from: Socket,
    private readonly to: Socket,
    private readonly shape: LinkShape,
  ) {
    const bdp = (shape.bitsPerSecond / 8) * (shape.rttMs / 1000);
    this.limit = Math.max(1 << 20, QUEUE_LIMIT_FACTOR * bdp);
    from.on("data", (d: Buffer) => this.push(d));
    from.on("end", () => this.push(undefined));
  }

  private endPending = false;

  private push(data: Buffer | undefined): void {
    const now = performance.now();
    if (!data) {
      this.endPending = true;
      this.queue.push({ due: Math.max(now, this.wireFree) + this.shape.rttMs / 2, data: Buffer.alloc(0) });
    } else {
      this.wireFree = Math.max(now, this.wireFree) + (data.length * 8 * 1000) / this.shape.bitsPerSecond;
      this.queue.push({ due: this.wireFree + this.shape.rttMs / 2, data });
      this.held += data.length;
      if (this.held > this.limit) this.from.pause();
    }
    this.arm();
  }

  private arm(): void {
    if (this.timer || this.queue.length === 0) return;
    const wait = Math.max(0, this.queue[0]!.due - performance.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.release();
    }, wait);
  }

  private release(): void {
    const now = performance.now();
    while (this.queue.length > 0 && this.queue[0]!.due <= now + 0.5) {
      const { data } = this.queue.shift()!;
      if (data.length === 0 && this.endPending && this.queue.length === 0) {
        this.to.end();
        return;
      }
      this.held -= data.length;
      if (!this.to.destroyed) this.to.write(data);
    }
    if (this.held <= this.limit / 2 && this.from.isPaused()) this.from.resume();
    this.arm();
  }

  stop(): void {
    clearTimeout(this.timer);
    this.queue.length = 0;
  }
}

export interface DelayLine {
  /** host:port to dial instead of the target. */
  address: string;
  close(): Promise<void>;
}

/** A TCP proxy on 127.0.0.1 to `target` (host:port) whose connections go through a link of `shape`. */
export async function startDelayLine(target: string, shape: LinkShape): Promise<DelayLine> {
  const i = target.lastIndexOf(":");
  const host = target.slice(0, i);
  const port = Number(target.slice(i + 1));
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect({ host, port });
    for (const s of [client, upstream]) {
      s.setNoDelay(true);
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
    }
    const ab = new Direction(client, upstream, shape);
    const ba = new Direction(upstream, client, shape);
    const end = () => {
      ab.stop();
      ba.stop();
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", end);
    upstream.on("close", end);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const a = server.address();
  const listenPort = typeof a === "object" && a ? a.port : 0;
  return {
    address: `127.0.0.1:${listenPort}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/**
 * Raw TCP through a link: a sink on 127.0.0.1 behind a delay line (`startLine`: in this process
 * or its own), and a client writing `bytes` into it as fast as TCP lets it. Seconds from the connection's first write to the sink having
 * read the last byte.
 */
export async function rawTcpThrough(shape: LinkShape, bytes: number, startLine: (target: string, shape: LinkShape) => Promise<DelayLine> = startDelayLine): Promise<number> {
  let received = 0;
  let done: (t: number) => void = () => undefined;
  const finished = new Promise<number>((r) => (done = r));
  const sink = createServer((s) => {
    s.on("data", (d: Buffer) => {
      received += d.length;
      if (received >= bytes) done(performance.now());
    });
    s.on("error", () => undefined);
  });
  await new Promise<void>((resolve) => sink.listen(0, "127.0.0.1", () => resolve()));
  const a = sink.address();
  const line = await startLine(`127.0.0.1:${typeof a === "object" && a ? a.port : 0}`, shape);
  try {
    const j = line.address.lastIndexOf(":");
    const client = connect({ host: "127.0.0.1", port: Number(line.address.slice(j + 1)) });
    await new Promise<void>((resolve, reject) => {
      client.once("connect", () => resolve());
      client.once("error", reject);
    });
    // The TCP handshake crossed the link already; time the data only.
    const chunk = Buffer.alloc(1 << 20, 0x5a);
    const started = performance.now();
    let sent = 0;
    while (sent < bytes) {
      const n = Math.min(chunk.length, bytes - sent);
      sent += n;
      if (!client.write(n === chunk.length ? chunk : chunk.subarray(0, n))) await new Promise((r) => client.once("drain", r));
    }
    const at = await finished;
    client.destroy();
    return (at - started) / 1000;
  } finally {
    await line.close();
    await new Promise<void>((r) => sink.close(() => r()));
  }
}
