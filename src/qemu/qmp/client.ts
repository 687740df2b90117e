import { EventEmitter } from "node:events";
import net from "node:net";
import { silentLogger, type Logger } from "../../common/logger.js";
import { QmpClosedError, QmpCommandError, QmpConnectError, QmpProtocolError, QmpTimeoutError } from "./errors.js";

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export interface QmpConnectOptions {
  socketPath: string;
  connectTimeoutMs?: number;
  /** Default deadline of each command; `execute` can override it. */
  commandTimeoutMs?: number;
  logger?: Logger;
}

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** A reply line above this size is not QMP we asked for (query-qmp-schema is ~200 KiB). */
const MAX_LINE_BYTES = 16 * 1024 * 1024;
const QMP_EVENT_NAME = /^[A-Z][A-Z0-9_]*$/;

/** A string as is, anything else as JSON: String() of a hostile object (`{"toString": 1}`) throws. */
function textOf(v: unknown, absent: string): string {
  if (v === undefined || v === null) return absent;
  return typeof v === "string" ? v : (JSON.stringify(v) ?? absent);
}

function isGreeting(v: unknown): v is QmpGreeting {
  const g = v as { version?: { qemu?: { major?: unknown } }; capabilities?: unknown } | null;
  return typeof g === "object" && g !== null && typeof g.version?.qemu?.major === "number" && Array.isArray(g.capabilities);
}

/**
 * QMP client: JSON lines over a unix socket, commands correlated by id, events interleaved.
 * Works with qemu-system-* and qemu-storage-daemon alike.
 */
export class QmpClient {
  readonly events = new EventEmitter();
  private readonly pending = new Map<string, Pending>();
  private nextId = 1;
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private closedError: Error | undefined;
  private readonly closedPromise: Promise<void>;
  private markClosed!: () => void;

  private constructor(
    private readonly socket: net.Socket,
    readonly socketPath: string,
    readonly greeting: QmpGreeting,
    private readonly commandTimeoutMs: number,
    private readonly logger: Logger,
  ) {
    this.events.setMaxListeners(100);
    this.closedPromise = new Promise((resolve) => (this.markClosed = resolve));
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (err) => this.fail(new QmpClosedError(socketPath), err));
    socket.on("close", () => this.fail(new QmpClosedError(socketPath)));
  }

  static async connect(opts: QmpConnectOptions): Promise<QmpClient> {
    const { socketPath } = opts;
    const logger = opts.logger ?? silentLogger;
    const connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    const { socket, greetingLine, rest } = await readGreetingRetrying(socketPath, connectTimeoutMs);
    let greeting: QmpGreeting;
    try {
      const parsed = JSON.parse(greetingLine) as { QMP?: unknown } | null;
      if (!isGreeting(parsed?.QMP)) throw new Error(`expected {"QMP": {"version": {"qemu": ...}, "capabilities": [...]}}, got ${greetingLine.slice(0, 200)}`);
      greeting = parsed.QMP;
    } catch (err) {
      socket.destroy();
      throw new QmpConnectError(socketPath, "the greeting is not QMP", { cause: err });
    }
    const client = new QmpClient(socket, socketPath, greeting, opts.commandTimeoutMs ?? 30_000, logger);
    if (rest.length > 0) client.onData(rest);
    await client.execute("qmp_capabilities");
    logger.debug({ socketPath, qemu: greeting.version.qemu }, "QMP connected");
    return client;
  }

  /** Resolves when the monitor connection is gone, for whatever reason. */
  get closed(): Promise<void> {
    return this.closedPromise;
  }

  get isClosed(): boolean {
    return this.closedError !== undefined;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: { timeoutMs?: number }): Promise<T> {
    if (this.closedError) return Promise.reject(new QmpClosedError(this.socketPath, command));
    const id = `q${this.nextId++}`;
    const timeoutMs = opts?.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpTimeoutError(command, timeoutMs, this.socketPath));
        // A late reply could only be matched by id, but QEMU may also be wedged: start clean.
        this.fail(new QmpClosedError(this.socketPath));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const line = JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
      this.logger.trace({ command, id }, "QMP execute");
      this.socket.write(line + "\n");
    });
  }

  /** Waits for the next event named `name` whose data satisfies `match`. */
  waitForEvent(name: string, match: (data: Record<string, unknown>) => boolean = () => true, timeoutMs = 30_000): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (ev: QmpEvent) => {
        if (!match(ev.data)) return;
        cleanup();
        resolve(ev);
      };
      const onClose = () => {
        cleanup();
        reject(new QmpClosedError(this.socketPath, `wait for event ${name}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpTimeoutError(`wait for event ${name}`, timeoutMs, this.socketPath));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.events.off(name, onEvent);
        this.events.off("close", onClose);
      };
      this.events.on(name, onEvent);
      this.events.once("close", onClose);
    });
  }

  /** HMP passthrough, used for `qemu-io -d` writes in tests and diagnostics. */
  async humanMonitorCommand(commandLine: string): Promise<string> {
    return this.execute<string>("human-monitor-command", { "command-line": commandLine });
  }

  async close(): Promise<void> {
    if (!this.closedError) {
      this.fail(new QmpClosedError(this.socketPath));
    }
    await this.closedPromise;
  }

  private onData(chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(0x0a, start); nl !== -1; nl = chunk.indexOf(0x0a, start)) {
      const piece = chunk.subarray(start, nl);
      const line = this.bufferedBytes > 0 ? Buffer.concat([...this.buffered, piece]).toString("utf8") : piece.toString("utf8");
      this.buffered = [];
      this.bufferedBytes = 0;
      start = nl + 1;
      if (line.trim().length > 0) this.onLine(line);
      if (this.closedError) return;
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      this.buffered.push(rest);
      this.bufferedBytes += rest.length;
      if (this.bufferedBytes > MAX_LINE_BYTES) {
        this.fail(new QmpProtocolError(this.socketPath, `a line longer than ${MAX_LINE_BYTES} bytes without a newline`));
      }
    }
  }

  private onLine(line: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      this.fail(new QmpProtocolError(this.socketPath, `not JSON: ${line.slice(0, 200)}`));
      return;
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      this.fail(new QmpProtocolError(this.socketPath, `not a JSON object: ${line.slice(0, 200)}`));
      return;
    }
    const msg = parsed as Record<string, unknown>;
    if (typeof msg.event === "string") {
      // QMP event names are upper case; any other name could be one of the emitter's own
      // ("error" throws when nobody listens, "close" would look like a lost connection).
      if (!QMP_EVENT_NAME.test(msg.event)) {
        this.fail(new QmpProtocolError(this.socketPath, `event name ${JSON.stringify(msg.event.slice(0, 64))} is not a QMP event name`));
        return;
      }
      const ev = { event: msg.event, data: (msg.data ?? {}) as Record<string, unknown>, timestamp: msg.timestamp } as QmpEvent;
      this.logger.trace({ event: ev.event }, "QMP event");
      this.events.emit(ev.event, ev);
      this.events.emit("*", ev);
      return;
    }
    const id = typeof msg.id === "string" ? msg.id : undefined;
    const pending = id === undefined ? undefined : this.pending.get(id);
    if (!pending || id === undefined) {
      // Replies to commands that already timed out land here; nothing waits for them.
      this.logger.debug({ line: line.slice(0, 200) }, "QMP reply without a pending command");
      return;
    }
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ("return" in msg) {
      pending.resolve(msg.return);
    } else if (msg.error && typeof msg.error === "object") {
      const e = msg.error as { class?: unknown; desc?: unknown };
      pending.reject(new QmpCommandError(pending.command, textOf(e.class, "GenericError"), textOf(e.desc, "")));
    } else {
      pending.reject(new QmpProtocolError(this.socketPath, `reply is neither return nor error: ${line.slice(0, 200)}`));
    }
  }

  private fail(err: Error, cause?: unknown): void {
    if (this.closedError) return;
    if (cause !== undefined) this.logger.debug({ err: cause }, "QMP socket error");
    this.closedError = err;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err instanceof QmpClosedError ? new QmpClosedError(this.socketPath, p.command) : err);
      this.pending.delete(id);
    }
    this.socket.destroy();
    this.events.emit("close");
    this.markClosed();
  }
}

/** QEMU creates the socket file a moment before it listens: a refused connect right after start is retried briefly. */
async function readGreetingRetrying(socketPath: string, timeoutMs: number): Promise<{ socket: net.Socket; greetingLine: string; rest: Buffer }> {
  const retryUntil = Date.now() + Math.min(2_000, timeoutMs);
  for (;;) {
    try {
      return await readGreeting(socketPath, timeoutMs);
    } catch (err) {
      const refused = err instanceof QmpConnectError && (err.cause as NodeJS.ErrnoException | undefined)?.code === "ECONNREFUSED";
      if (!refused || Date.now() > retryUntil) throw err;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}

function readGreeting(socketPath: string, timeoutMs: number): Promise<{ socket: net.Socket; greetingLine: string; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => finish(new QmpConnectError(socketPath, `no greeting within ${timeoutMs} ms`)), timeoutMs);
    const finish = (err?: Error, value?: { greetingLine: string; rest: Buffer }) => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("error", onError);
      socket.off("close", onClose);
      if (err) {
        socket.destroy();
        reject(err);
      } else if (value) {
        resolve({ socket, ...value });
      }
    };
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      const all = Buffer.concat(chunks);
      const nl = all.indexOf(0x0a);
      if (nl !== -1) {
        finish(undefined, { greetingLine: all.subarray(0, nl).toString("utf8"), rest: all.subarray(nl + 1) });
      } else if (size > 64 * 1024) {
        finish(new QmpConnectError(socketPath, "greeting longer than 64 KiB: not a QMP monitor"));
      }
    };
    const onError = (err: NodeJS.ErrnoException) => {
      const detail = err.code === "ENOENT" ? "the socket does not exist" : err.code === "ECONNREFUSED" ? "nothing is listening on it" : err.message;
      finish(new QmpConnectError(socketPath, detail, { cause: err }));
    };
    const onClose = () => finish(new QmpConnectError(socketPath, "closed before the greeting (another client may hold the monitor)"));
    socket.on("data", onData);
    socket.on("error", onError);
    socket.on("close", onClose);
  });
}
