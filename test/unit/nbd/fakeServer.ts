/**
 * A scripted NBD server for unit tests: a unix socket in a temp dir whose connection handler gets
 * raw read/write access, plus builders for every wire structure the client parses.
 */
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";

export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const IHAVEOPT = 0x49484156454f5054n;

export class FakeConn {
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  ended = false;

  constructor(readonly socket: net.Socket) {
    socket.on("data", (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    socket.on("close", () => {
      this.ended = true;
      this.waiter?.();
    });
    socket.on("error", () => {});
  }

  /** Resolves with exactly n bytes, or rejects if the client goes away first. */
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`fake server: client closed while reading ${n} bytes (have ${this.buf.length})`);
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = undefined;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  write(...bufs: Buffer[]): void {
    for (const b of bufs) this.socket.write(b);
  }

  /** Sends `data` in pieces of `size` bytes, each in its own write, to exercise incremental parsing. */
  async writeSlowly(data: Buffer, size: number): Promise<void> {
    for (let i = 0; i < data.length; i += size) {
      this.socket.write(data.subarray(i, i + size));
      await new Promise((r) => setImmediate(r));
    }
  }

  async readOption(): Promise<{ option: number; data: Buffer }> {
    const h = await this.read(16);
    if (h.readBigUInt64BE(0) !== IHAVEOPT) throw new Error("fake server: bad option magic");
    const option = h.readUInt32BE(8);
    const data = await this.read(h.readUInt32BE(12));
    return { option, data };
  }

  async readRequest(): Promise<NbdRequest> {
    const h = await this.read(28);
    if (h.readUInt32BE(0) !== 0x25609513) throw new Error(`fake server: bad request magic ${h.readUInt32BE(0).toString(16)}`);
    const req: NbdRequest = {
      flags: h.readUInt16BE(4),
      type: h.readUInt16BE(6),
      cookie: h.readBigUInt64BE(8),
      offset: Number(h.readBigUInt64BE(16)),
      length: h.readUInt32BE(24),
    };
    if (req.type === 1) req.payload = Buffer.from(await this.read(req.length));
    return req;
  }
}

export interface NbdRequest {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
  payload?: Buffer;
}

export interface FakeServer {
  socketPath: string;
  /** Set when started with { tcp: true }. */
  port?: number;
  /** Errors thrown by the script (assert on them to catch broken scripts). */
  scriptErrors: unknown[];
  connections: number;
  close(): Promise<void>;
}

export async function startFakeServer(script: (conn: FakeConn) => Promise<void>, opts: { tcp?: boolean } = {}): Promise<FakeServer> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "qreplica-nbd-unit-"));
  const socketPath = path.join(dir, "nbd.sock");
  const sockets = new Set<net.Socket>();
  const state: FakeServer = {
    socketPath,
    scriptErrors: [],
    connections: 0,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      await rm(dir, { recursive: true, force: true });
    },
  };
  const server = net.createServer((socket) => {
    sockets.add(socket);
    state.connections++;
    socket.on("close", () => sockets.delete(socket));
    script(new FakeConn(socket)).catch((err: unknown) => {
      if (!(err instanceof Error && err.message.startsWith("fake server: client closed"))) state.scriptErrors.push(err);
    });
  });
  if (opts.tcp) {
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    state.port = (server.address() as net.AddressInfo).port;
  } else {
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  }
  return state;
}

// ---- wire builders ----

export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}
export function u64(n: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

export function greeting(flags = 3): Buffer {
  return Buffer.concat([u64(0x4e42444d41474943n), u64(IHAVEOPT), u16(flags)]);
}

export function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([u64(OPT_REPLY_MAGIC), u32(option), u32(type), u32(data.length), data]);
}

export const REP_ACK = 1;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
export const REP_ERR_UNSUP = 0x8000_0001;
export const REP_ERR_UNKNOWN = 0x8000_0006;

export function infoExport(size: number | bigint, flags: number): Buffer {
  return Buffer.concat([u16(0), u64(size), u16(flags)]);
}
export function infoBlockSize(min: number, pref: number, max: number): Buffer {
  return Buffer.concat([u16(3), u32(min), u32(pref), u32(max)]);
}

export function simpleReply(cookie: bigint, error = 0, payload: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([u32(0x67446698), u32(error), u64(cookie), payload]);
}

export const DONE = 1;
export function chunk(cookie: bigint, flags: number, type: number, payload: Buffer, lengthOverride?: number): Buffer {
  return Buffer.concat([u32(0x668e33ef), u16(flags), u16(type), u64(cookie), u32(lengthOverride ?? payload.length), payload]);
}
export function offsetData(cookie: bigint, offset: number, data: Buffer, flags = 0): Buffer {
  return chunk(cookie, flags, 1, Buffer.concat([u64(offset), data]));
}
export function offsetHole(cookie: bigint, offset: number, size: number, flags = 0): Buffer {
  return chunk(cookie, flags, 2, Buffer.concat([u64(offset), u32(size)]));
}
export function noneDone(cookie: bigint): Buffer {
  return chunk(cookie, DONE, 0, Buffer.alloc(0));
}
export function blockStatusChunk(cookie: bigint, contextId: number, descs: Array<[number, number]>, flags = 0): Buffer {
  return chunk(cookie, flags, 5, Buffer.concat([u32(contextId), ...descs.flatMap(([l, f]) => [u32(l), u32(f)])]));
}
export function errorChunk(cookie: bigint, errno: number, message: string, flags = DONE): Buffer {
  const msg = Buffer.from(message);
  return chunk(cookie, flags, 0x8001, Buffer.concat([u32(errno), u16(msg.length), msg]));
}

// ---- a conforming handshake ----

export const FLAGS_RW = 0x1 | 0x4 | 0x8 | 0x40 | 0x100 | 0x800; // HAS_FLAGS SEND_FLUSH SEND_FUA WRITE_ZEROES MULTI_CONN FAST_ZERO
export const FLAGS_RO = 0x1 | 0x2 | 0x4;

export interface HandshakeScript {
  size?: number | bigint;
  flags?: number;
  structured?: boolean;
  /** Contexts the server knows, name -> id; requested ones found here are granted. */
  contexts?: Record<string, number>;
  blockSize?: [number, number, number] | null;
  exportName?: string;
}

export interface HandshakeSeen {
  clientFlags: number;
  options: number[];
  requestedContexts: string[];
}

/** Plays the server side of a successful fixed-newstyle negotiation. */
export async function serveHandshake(conn: FakeConn, s: HandshakeScript = {}): Promise<HandshakeSeen> {
  conn.write(greeting());
  const clientFlags = (await conn.read(4)).readUInt32BE(0);
  const seen: HandshakeSeen = { clientFlags, options: [], requestedContexts: [] };
  for (;;) {
    const { option, data } = await conn.readOption();
    seen.options.push(option);
    if (option === 8) {
      conn.write(optionReply(8, s.structured === false ? REP_ERR_UNSUP : REP_ACK));
    } else if (option === 10) {
      let p = 4 + data.readUInt32BE(0);
      const n = data.readUInt32BE(p);
      p += 4;
      for (let i = 0; i < n; i++) {
        const len = data.readUInt32BE(p);
        const name = data.toString("utf8", p + 4, p + 4 + len);
        p += 4 + len;
        seen.requestedContexts.push(name);
        const id = s.contexts?.[name];
        if (id !== undefined) conn.write(optionReply(10, REP_META_CONTEXT, Buffer.concat([u32(id), Buffer.from(name)])));
      }
      conn.write(optionReply(10, REP_ACK));
    } else if (option === 7) {
      const name = data.toString("utf8", 4, 4 + data.readUInt32BE(0));
      if (s.exportName !== undefined && name !== s.exportName) {
        conn.write(optionReply(7, REP_ERR_UNKNOWN, Buffer.from(`export '${name}' not present`)));
        continue;
      }
      conn.write(optionReply(7, REP_INFO, infoExport(s.size ?? 1 << 20, s.flags ?? FLAGS_RW)));
      if (s.blockSize !== null) {
        const [a, b, c] = s.blockSize ?? [1, 4096, 32 << 20];
        conn.write(optionReply(7, REP_INFO, infoBlockSize(a, b, c)));
      }
      conn.write(optionReply(7, REP_ACK));
      return seen;
    } else {
      conn.write(optionReply(option, REP_ERR_UNSUP));
    }
  }
}

/** Resolves after the event loop had a chance to deliver pending socket events. */
export function settle(ms = 20): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
