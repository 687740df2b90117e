import net from "node:net";

/**
 * A TCP proxy the campaign owns, between the agent and the replica site: the agent's config names
 * its address, so every link fault is a fault of the real connection (gRPC over mutual TLS passes
 * through untouched while the link is healthy).
 */
type LinkMode = "ok" | "cut" | "stall" | "blackhole";

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
  /** Black-holed for good: the peer "vanished" without a FIN or RST (a half-open connection). */
  dead: boolean;
  /** Bytes held back while stalled, forwarded in order on heal. */
  held: Array<{ to: net.Socket; chunk: Buffer }>;
}

export class FaultProxy {
  private readonly pairs = new Set<Pair>();
  private mode: LinkMode = "ok";
  /** Bytes per second while throttled; undefined: full speed. */
  private throttleBps: number | undefined;
  /** Bytes forwarded either way since the start: tells the campaign that a stream is flowing. */
  forwardedBytes = 0;

  private constructor(
    private readonly server: net.Server,
    readonly address: string,
    private readonly target: { host: string; port: number },
  ) {}

  static async start(target: string): Promise<FaultProxy> {
    const i = target.lastIndexOf(":");
    const to = { host: target.slice(0, i), port: Number(target.slice(i + 1)) };
    let proxy: FaultProxy | undefined;
    const server = net.createServer((client) => proxy!.accept(client));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as net.AddressInfo).port;
    proxy = new FaultProxy(server, `127.0.0.1:${port}`, to);
    return proxy;
  }

  get connections(): number {
    return this.pairs.size;
  }

  private accept(client: net.Socket): void {
    if (this.mode === "cut") {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.target.port, this.target.host);
    // A connection opened during a half-open fault is as dead as the ones before it.
    const pair: Pair = { client, upstream, dead: this.mode === "blackhole", held: [] };
    this.pairs.add(pair);
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    this.pump(pair, client, upstream);
    this.pump(pair, upstream, client);
  }

  private pump(pair: Pair, from: net.Socket, to: net.Socket): void {
    from.on("data", (chunk: Buffer) => {
      if (pair.dead) return; // swallowed: the sender's TCP sees its bytes acknowledged, nothing arrives
      if (this.mode === "stall") {
        pair.held.push({ to, chunk });
        from.pause();
        return;
      }
      this.forward(from, to, chunk);
    });
  }

  private forward(from: net.Socket, to: net.Socket, chunk: Buffer): void {
    this.forwardedBytes += chunk.length;
    const drained = to.write(chunk);
    const bps = this.throttleBps;
    if (!drained || bps !== undefined) {
      from.pause();
      let waits = (drained ? 0 : 1) + (bps !== undefined ? 1 : 0);
      const done = () => {
        if (--waits === 0 && this.mode === "ok") from.resume();
      };
      if (!drained) to.once("drain", done);
      if (bps !== undefined) setTimeout(done, Math.ceil((chunk.length / bps) * 1000));
    }
  }

  /** Every connection torn down, new ones refused (closed at once) until `heal`. */
  cut(): void {
    this.mode = "cut";
    for (const p of this.pairs) {
      p.client.destroy();
      p.upstream.destroy();
    }
  }

  /** Nothing forwarded, nothing closed: both ends wait (flow control backs up) until `heal`. */
  stall(): void {
    this.mode = "stall";
    for (const p of this.pairs) {
      p.client.pause();
      p.upstream.pause();
    }
  }

  /**
   * Half-open: every connection open now (and any opened until `heal`) swallows what it is sent
   * and never answers nor closes, forever. Only the endpoints' own liveness checks can notice.
   */
  blackhole(): void {
    this.mode = "blackhole";
    for (const p of this.pairs) p.dead = true;
  }

  /** A TCP reset of every open connection (the stream dies in the middle of whatever it carried). */
  reset(): number {
    let n = 0;
    for (const p of this.pairs) {
      p.client.resetAndDestroy();
      p.upstream.resetAndDestroy();
      n++;
    }
    return n;
  }

  throttle(bytesPerSecond: number): void {
    this.throttleBps = bytesPerSecond;
  }

  heal(): void {
    this.mode = "ok";
    this.throttleBps = undefined;
    for (const p of this.pairs) {
      if (p.dead) continue;
      for (const h of p.held.splice(0)) (this.forwardedBytes += h.chunk.length), h.to.write(h.chunk);
      p.client.resume();
      p.upstream.resume();
    }
  }

  async close(): Promise<void> {
    for (const p of this.pairs) {
      p.client.destroy();
      p.upstream.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
