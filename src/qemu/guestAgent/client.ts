import { randomInt } from "node:crypto";
import net from "node:net";
import { errorMessage } from "../../common/errors.js";
import { silentLogger, type Logger } from "../../common/logger.js";
import { GuestAgentCommandError, GuestAgentProtocolError, GuestAgentTimeoutError, GuestAgentUnavailableError } from "./errors.js";
import { QgaLineSplitter, SENTINEL, type FrameEvent } from "./framing.js";
import { withFrozenFilesystems, type FrozenResult, type WithFrozenFilesystemsOptions } from "./freeze.js";

export interface GuestAgentOptions {
  /** Host side of the virtio-serial `org.qemu.guest_agent.0` chardev (a unix socket). */
  socketPath: string;
  connectTimeoutMs?: number;
  /** How long guest-sync-delimited may take before the agent counts as not running. */
  syncTimeoutMs?: number;
  /** Default deadline of a command; each call can override it. */
  commandTimeoutMs?: number;
  /** Replies are small (guest-info is ~10 KiB); anything far larger is not the agent talking. */
  maxLineBytes?: number;
  logger?: Logger;
}

export interface ExecuteOptions {
  /** Bounds connecting, resynchronising and the reply together, from the call's turn on. */
  timeoutMs?: number;
}

export type FsfreezeStatus = "thawed" | "frozen";

type Waiter =
  | { kind: "sync"; id: number; seenSentinel: boolean; resolve(): void; reject(err: Error): void }
  | { kind: "command"; id: string; command: string; resolve(value: unknown): void; reject(err: Error): void };

/**
 * qemu-guest-agent client. QGA runs one command at a time and has no greeting, and the channel
 * outlives both ends (a previous client's half-read request or an unread reply may sit in it), so:
 * commands are serialised, the stream is resynchronised with guest-sync-delimited on connect and
 * after any timeout or garbage, and the connection is (re)opened lazily by the next command.
 */
export class GuestAgentClient {
  readonly socketPath: string;
  private readonly connectTimeoutMs: number;
  private readonly syncTimeoutMs: number;
  private readonly commandTimeoutMs: number;
  private readonly logger: Logger;
  private readonly splitter: QgaLineSplitter;
  private socket: net.Socket | undefined;
  private synced = false;
  private waiter: Waiter | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private nextId = 1;
  private closed = false;

  constructor(opts: GuestAgentOptions) {
    this.socketPath = opts.socketPath;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 5_000;
    this.syncTimeoutMs = opts.syncTimeoutMs ?? 5_000;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 10_000;
    this.logger = opts.logger ?? silentLogger;
    this.splitter = new QgaLineSplitter(opts.maxLineBytes ?? 1024 * 1024);
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: ExecuteOptions): Promise<T> {
    const timeoutMs = opts?.timeoutMs ?? this.commandTimeoutMs;
    const run = this.queue.then(() => this.run(command, args, timeoutMs));
    this.queue = run.catch(() => undefined);
    return run as Promise<T>;
  }

  async ping(opts?: ExecuteOptions): Promise<void> {
    await this.execute("guest-ping", undefined, opts);
  }

  async fsfreezeStatus(opts?: ExecuteOptions): Promise<FsfreezeStatus> {
    const status = await this.execute<unknown>("guest-fsfreeze-status", undefined, opts);
    if (status !== "thawed" && status !== "frozen") {
      throw new GuestAgentProtocolError(this.socketPath, `guest-fsfreeze-status returned ${JSON.stringify(status)}`);
    }
    return status;
  }

  /** Freezes every freezable guest filesystem; returns how many were frozen. */
  fsfreezeFreeze(opts?: ExecuteOptions): Promise<number> {
    return this.execute<number>("guest-fsfreeze-freeze", undefined, opts);
  }

  /** Returns how many filesystems were thawed. */
  fsfreezeThaw(opts?: ExecuteOptions): Promise<number> {
    return this.execute<number>("guest-fsfreeze-thaw", undefined, opts);
  }

  /** See {@link withFrozenFilesystems}. */
  withFrozenFilesystems<T>(fn: () => Promise<T>, opts: WithFrozenFilesystemsOptions): Promise<FrozenResult<T>> {
    return withFrozenFilesystems(this, fn, opts);
  }

  close(): void {
    this.closed = true;
    this.dropConnection("the client was closed");
  }

  private async run(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
    if (this.closed) throw new GuestAgentUnavailableError(this.socketPath, "the client was closed", false);
    const deadline = Date.now() + timeoutMs;
    const remaining = () => Math.max(1, deadline - Date.now());
    const socket = this.socket ?? (await this.connect(Math.min(this.connectTimeoutMs, remaining())));
    if (!this.synced) await this.sync(socket, Math.min(this.syncTimeoutMs, remaining()));
    if (this.socket !== socket) throw new GuestAgentUnavailableError(this.socketPath, "the channel closed", false);
    const id = `qr${this.nextId++}`;
    const line = JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
    return this.waitFor(
      remaining(),
      (resolve, reject) => {
        this.waiter = { kind: "command", id, command, resolve, reject };
        this.logger.trace({ command, id }, "QGA execute");
        socket.write(line + "\n");
      },
      () => {
        // The agent may still answer (or act) later; only a resync can tell that reply from ours.
        this.synced = false;
        return new GuestAgentTimeoutError(command, timeoutMs, this.socketPath);
      },
    );
  }

  private connect(timeoutMs: number): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(this.socketPath);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new GuestAgentUnavailableError(this.socketPath, `connecting took longer than ${timeoutMs} ms`, false));
      }, timeoutMs);
      socket.once("error", (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        const detail = err.code === "ENOENT" ? "the socket does not exist" : err.code === "ECONNREFUSED" ? "nothing listens on the socket" : err.message;
        reject(new GuestAgentUnavailableError(this.socketPath, detail, false, { cause: err }));
      });
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.removeAllListeners("error");
        this.socket = socket;
        this.synced = false;
        this.splitter.reset();
        socket.on("data", (chunk: Buffer) => this.onData(chunk));
        // A dead socket's late events must not tear down its replacement.
        socket.on("error", (err) => this.socket === socket && this.dropConnection("the channel failed", err));
        socket.on("close", () => this.socket === socket && this.dropConnection("the channel closed (QEMU exited?)"));
        resolve(socket);
      });
    });
  }

  private async sync(socket: net.Socket, timeoutMs: number): Promise<void> {
    // Random, so a reply to an earlier client's (or our own abandoned) sync cannot match.
    const id = randomInt(1, 2 ** 47);
    await this.waitFor(
      timeoutMs,
      (resolve, reject) => {
        this.waiter = { kind: "sync", id, seenSentinel: false, resolve: () => resolve(undefined), reject };
        // The leading 0xFF makes the agent drop any half-read request left in the channel.
        const request = Buffer.from(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } }) + "\n");
        socket.write(Buffer.concat([Buffer.from([SENTINEL]), request]));
      },
      () => new GuestAgentUnavailableError(this.socketPath, `no answer to guest-sync-delimited within ${timeoutMs} ms`, false),
    );
    this.synced = true;
    this.logger.debug({ socketPath: this.socketPath }, "QGA channel synchronised");
  }

  private waitFor(timeoutMs: number, start: (resolve: (v: unknown) => void, reject: (e: Error) => void) => void, onTimeout: () => Error): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(onTimeout());
      }, timeoutMs);
      const settle =
        <A>(f: (a: A) => void) =>
        (a: A) => {
          clearTimeout(timer);
          this.waiter = undefined;
          f(a);
        };
      start(settle(resolve), settle(reject));
    });
  }

  private onData(chunk: Buffer): void {
    for (const ev of this.splitter.push(chunk)) this.onFrame(ev);
  }

  private onFrame(ev: FrameEvent): void {
    const waiter = this.waiter;
    if (waiter?.kind === "sync") {
      // Everything before the sentinel is stale; after it, only our id's reply counts.
      if (ev.kind === "sentinel") waiter.seenSentinel = true;
      else if (ev.kind === "line" && waiter.seenSentinel && parseJson(ev.line)?.return === waiter.id) waiter.resolve();
      return;
    }
    if (ev.kind === "sentinel") return;
    if (ev.kind === "overlong") {
      this.synced = false;
      waiter?.reject(new GuestAgentProtocolError(this.socketPath, `a reply line longer than ${ev.limit} bytes`));
      return;
    }
    const msg = parseJson(ev.line);
    if (!waiter) {
      this.logger.debug({ line: ev.line.slice(0, 200) }, "QGA output with no command waiting");
      return;
    }
    if (!msg) {
      this.synced = false;
      waiter.reject(new GuestAgentProtocolError(this.socketPath, `not JSON: ${ev.line.slice(0, 200)}`));
      return;
    }
    // Agents echo our id; one that does not can only be answering the single command in flight.
    if (msg.id !== undefined && msg.id !== waiter.id) {
      this.logger.debug({ line: ev.line.slice(0, 200) }, "QGA reply for another command");
      return;
    }
    if ("return" in msg) {
      waiter.resolve(msg.return);
    } else if (msg.error !== null && typeof msg.error === "object") {
      const e = msg.error as { class?: unknown; desc?: unknown };
      waiter.reject(new GuestAgentCommandError(waiter.command, textOf(e.class, "GenericError"), textOf(e.desc, "")));
    } else {
      this.synced = false;
      waiter.reject(new GuestAgentProtocolError(this.socketPath, `reply is neither return nor error: ${ev.line.slice(0, 200)}`));
    }
  }

  private dropConnection(detail: string, cause?: unknown): void {
    const socket = this.socket;
    this.socket = undefined;
    this.synced = false;
    this.splitter.reset();
    socket?.destroy();
    const waiter = this.waiter;
    if (!waiter) return;
    const pending = waiter.kind === "command" ? ` while '${waiter.command}' was pending` : "";
    const why = cause === undefined ? "" : `: ${errorMessage(cause)}`;
    waiter.reject(new GuestAgentUnavailableError(this.socketPath, detail + pending + why, waiter.kind === "command", { cause }));
  }
}

/** A string as is, anything else as JSON: String() of a hostile object (`{"toString": 1}`) throws. */
function textOf(v: unknown, absent: string): string {
  if (v === undefined || v === null) return absent;
  return typeof v === "string" ? v : (JSON.stringify(v) ?? absent);
}

function parseJson(line: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(line);
    return v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
