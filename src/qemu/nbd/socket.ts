/**
 * Opening the socket and feeding the pull-based handshake. Kept apart from the client so that the
 * transmission phase only ever sees a connected, negotiated socket.
 */
import net from "node:net";
import { ByteQueue } from "./byteQueue.js";
import type { HandshakeIo } from "./handshake.js";
import { NbdClosedError, NbdConnectError, NbdRequestError } from "./errors.js";

export type NbdEndpoint = { socketPath: string } | { host: string; port: number };

export function describeEndpoint(ep: NbdEndpoint): string {
  return "socketPath" in ep ? ep.socketPath : `${ep.host}:${ep.port}`;
}

/**
 * Receives socket reads. `nextBuffer` chooses where the kernel writes the next read: a slice of a
 * READ's destination lets bulk payload land in place with no copy at all; a number means at most
 * that many bytes into the shared scratch buffer (a reply header, so that the payload behind it is
 * left in the socket for a direct read); undefined means all of the scratch buffer. Scratch bytes
 * are only valid during the `onRead` call.
 */
export interface ReadSink {
  nextBuffer(): Buffer | number | undefined;
  onRead(bytes: Buffer, direct: boolean): void;
}

const SCRATCH_BYTES = 256 * 1024;

/** Routes socket reads (Node's `onread` mode: no per-read allocation) to the current sink. */
export class ReadPump {
  sink: ReadSink | undefined;
  private readonly scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  private current: Buffer = this.scratch;
  private direct = false;

  readonly buffer = (): Buffer => {
    const next = this.sink?.nextBuffer();
    this.direct = Buffer.isBuffer(next);
    this.current = Buffer.isBuffer(next) ? next : typeof next === "number" ? this.scratch.subarray(0, Math.max(1, Math.min(next, SCRATCH_BYTES))) : this.scratch;
    return this.current;
  };

  readonly callback = (n: number): boolean => {
    this.sink?.onRead(this.current.subarray(0, n), this.direct);
    return true;
  };
}

/** Resolves once connected. Never times out by itself: the caller bounds the whole connect + handshake. */
export function openSocket(ep: NbdEndpoint): { socket: net.Socket; pump: ReadPump; connected: Promise<void> } {
  const pump = new ReadPump();
  const onread = { buffer: pump.buffer, callback: pump.callback };
  const socket = "socketPath" in ep ? net.createConnection({ path: ep.socketPath, onread }) : net.createConnection({ host: ep.host, port: ep.port, onread });
  const target = describeEndpoint(ep);
  const connected = new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      socket.off("connect", onConnect);
      reject(connectError(ep, target, err));
    };
    const onConnect = (): void => {
      socket.off("error", onError);
      if (!("socketPath" in ep)) socket.setNoDelay(true);
      resolve();
    };
    socket.once("error", onError);
    socket.once("connect", onConnect);
  });
  return { socket, pump, connected };
}

function connectError(ep: NbdEndpoint, target: string, err: NodeJS.ErrnoException): NbdConnectError {
  const opts = { cause: err };
  if ("socketPath" in ep && (err.code === "ENOENT" || err.code === "ECONNREFUSED")) {
    return new NbdConnectError(`no NBD server listening at ${target}: is the QEMU process running and its NBD server started? (${err.code})`, opts);
  }
  if (err.code === "ECONNREFUSED") {
    return new NbdConnectError(`no NBD server listening at ${target} (connection refused)`, opts);
  }
  if (err.code === "EACCES" || err.code === "EPERM") {
    return new NbdConnectError(`permission denied connecting to the NBD socket ${target} (${err.code})`, opts);
  }
  return new NbdConnectError(`cannot connect to NBD server at ${target}: ${err.message}`, opts);
}

/**
 * Buffers socket data during the handshake and lets the negotiation await "n bytes available".
 * After `detach()`, leftover bytes stay in `queue` for the reply reader.
 */
export class HandshakeChannel implements HandshakeIo, ReadSink {
  readonly queue = new ByteQueue();
  private waiting: { bytes: number; what: string; resolve: () => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  nextBuffer(): undefined {
    return undefined;
  }

  onRead(bytes: Buffer): void {
    this.queue.push(Buffer.from(bytes)); // scratch memory is reused by the next read
    const w = this.waiting;
    if (w !== undefined && this.queue.length >= w.bytes) {
      this.waiting = undefined;
      w.resolve();
    }
  }
  private readonly onError = (err: Error): void => {
    this.lastError = err;
  };
  private lastError: Error | undefined;
  private readonly onClose = (): void => {
    const w = this.waiting;
    const detail = w ? `after ${this.queue.length} of ${w.bytes} bytes of ${w.what}` : "";
    this.fail(
      new NbdClosedError(`NBD connection to ${this.target} closed during the handshake ${detail}`.trimEnd(), {
        cause: this.lastError,
      }),
    );
  };

  constructor(
    private readonly socket: net.Socket,
    private readonly pump: ReadPump,
    readonly target: string,
  ) {
    pump.sink = this;
    socket.on("error", this.onError);
    socket.on("close", this.onClose);
  }

  need(bytes: number, what: string): Promise<void> {
    if (this.queue.length >= bytes) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting = { bytes, what, resolve, reject };
    });
  }

  write(buf: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(buf);
  }

  /** Makes every current and future `need` reject (close, timeout). */
  fail(err: Error): void {
    this.failure ??= err;
    const w = this.waiting;
    this.waiting = undefined;
    w?.reject(this.failure);
  }

  /** What we were waiting for, for timeout messages. */
  describeWait(): string {
    const w = this.waiting;
    return w ? `waiting for ${w.what} (${this.queue.length} of ${w.bytes} bytes received)` : "";
  }

  detach(): void {
    if (this.pump.sink === this) this.pump.sink = undefined;
    this.socket.off("error", this.onError);
    this.socket.off("close", this.onClose);
  }
}

/** Exactly one of a unix socket path or a TCP host + port. */
export function endpointOf(opts: { socketPath?: string; host?: string; port?: number }): NbdEndpoint {
  if (opts.socketPath !== undefined && opts.host === undefined) return { socketPath: opts.socketPath };
  if (opts.socketPath === undefined && opts.host !== undefined && opts.port !== undefined) {
    return { host: opts.host, port: opts.port };
  }
  throw new NbdRequestError("NbdConnectOptions needs either socketPath, or host and port (not both)");
}
