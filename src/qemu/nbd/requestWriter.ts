/**
 * Encodes requests and writes them in order while honouring socket backpressure: once
 * `socket.write()` returns false, later requests wait in a queue until 'drain', so a burst of large
 * WRITEs never piles up unbounded in Node's socket buffer.
 */
import type net from "node:net";
import { NBD_REQUEST_HEADER_BYTES, NBD_REQUEST_MAGIC } from "./constants.js";

export class RequestWriter {
  private blocked = false;
  private queue: Buffer[][] = [];
  private stopped = false;

  constructor(private readonly socket: net.Socket) {
    socket.on("drain", () => this.flush());
  }

  /** Queues header (+ payload, sent by reference) as one unit. */
  send(command: number, flags: number, cookie: number, offset: number, length: number, payload?: Buffer): void {
    if (this.stopped) return;
    const bufs = [encodeRequest(command, flags, cookie, offset, length)];
    if (payload !== undefined) bufs.push(payload);
    if (this.blocked) this.queue.push(bufs);
    else this.writeNow(bufs);
  }

  /** Drops whatever has not reached the socket yet; used when the connection ends. */
  stop(): void {
    this.stopped = true;
    this.queue = [];
  }

  private writeNow(bufs: Buffer[]): void {
    // Requests issued in the same tick (a pipeline refilling itself) leave in one writev, not one
    // syscall each.
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    let ok = true;
    for (const b of bufs) ok = this.socket.write(b);
    if (!ok) this.blocked = true;
  }

  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private flush(): void {
    this.blocked = false;
    while (!this.blocked && !this.stopped && this.queue.length > 0) this.writeNow(this.queue.shift()!);
  }
}

export function encodeRequest(command: number, flags: number, cookie: number, offset: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(NBD_REQUEST_HEADER_BYTES);
  h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(command, 6);
  h.writeUInt32BE(Math.floor(cookie / 0x1_0000_0000), 8);
  h.writeUInt32BE(cookie >>> 0, 12);
  h.writeUInt32BE(Math.floor(offset / 0x1_0000_0000), 16);
  h.writeUInt32BE(offset >>> 0, 20);
  h.writeUInt32BE(length, 24);
  return h;
}
