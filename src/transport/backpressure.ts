import { QreplicaError } from "../common/errors.js";

/** The stream ended or failed while a message was waiting to be written. */
export class StreamClosedError extends QreplicaError {
  readonly code = "STREAM_CLOSED" as const;
}

/** The part of a Node writable (grpc-js client and server streams are ones) this needs. */
export interface BackpressureWritable<T> {
  write(message: T, callback?: (err?: Error | null) => void): boolean;
  once(event: "drain" | "close", listener: () => void): unknown;
  once(event: "error", listener: (err: Error) => void): unknown;
  off(event: "drain" | "close", listener: () => void): unknown;
  off(event: "error", listener: (err: Error) => void): unknown;
  readonly destroyed: boolean;
  readonly writableEnded: boolean;
  readonly writableNeedDrain: boolean;
  readonly writableLength: number;
}

// One chain per stream, so that callers who do not await each write still go one at a time:
// without it, N concurrent callers would all see "not full" and buffer N messages.
const queues = new WeakMap<object, Promise<void>>();

/**
 * Writes `message` and resolves once the stream can take another, i.e. after 'drain' when
 * `write()` returned false. Rejects with `StreamClosedError` if the stream errors or closes first,
 * so a sender blocked on a stalled peer is released by the call's cancellation or deadline.
 * This bounds a sender's memory to the stream's high-water mark plus HTTP/2 windows.
 */
export function writeWithBackpressure<T>(stream: BackpressureWritable<T>, message: T, opts: WriteOptions = {}): Promise<void> {
  const previous = queues.get(stream) ?? Promise.resolve();
  const next = previous.then(() => writeOne(stream, message, opts));
  // A failed write fails the stream; later writes then fail on their own checks, so the chain
  // itself must not stay rejected.
  queues.set(
    stream,
    next.catch(() => undefined),
  );
  return next;
}

export interface WriteOptions {
  /**
   * Also wait while this many messages are still unwritten, below the stream's own high-water
   * mark: grpc-js streams queue 16 messages before write() says stop, 16 chunks of memory.
   */
  maxUnwritten?: number;
}

// Wakes a writer waiting for one of its messages to be written.
const writtenWaiters = new WeakMap<object, () => void>();

async function writeOne<T>(stream: BackpressureWritable<T>, message: T, opts: WriteOptions): Promise<void> {
  ensureOpen(stream);
  // Someone wrote to this stream directly and filled it: wait rather than add to the pile.
  if (stream.writableNeedDrain) await drained(stream);
  ensureOpen(stream);
  const { maxUnwritten } = opts;
  // The callback runs once the stream is done with the message (grpc-js: framed and handed to HTTP/2).
  const ok = stream.write(message, () => {
    const wake = writtenWaiters.get(stream);
    writtenWaiters.delete(stream);
    wake?.();
  });
  if (!ok) await drained(stream);
  else if (maxUnwritten !== undefined && stream.writableLength >= maxUnwritten) await oneWritten(stream);
}

function oneWritten(stream: BackpressureWritable<unknown>): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const cleanup = (): void => {
      stream.off("error", onError);
      stream.off("close", onClose);
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new StreamClosedError(`the stream failed while waiting for a write: ${err.message}`, { cause: err }));
    };
    const onClose = (): void => {
      cleanup();
      reject(new StreamClosedError("the stream closed while waiting for a write"));
    };
    writtenWaiters.set(stream, () => {
      cleanup();
      resolve();
    });
    stream.once("error", onError);
    stream.once("close", onClose);
  });
}

function ensureOpen(stream: BackpressureWritable<unknown>): void {
  if (stream.destroyed || stream.writableEnded) {
    throw new StreamClosedError(`cannot write: the stream is already ${stream.destroyed ? "closed" : "ended"}`);
  }
}

function drained(stream: BackpressureWritable<unknown>): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const cleanup = (): void => {
      stream.off("drain", onDrain);
      stream.off("error", onError);
      stream.off("close", onClose);
    };
    const onDrain = (): void => {
      cleanup();
      resolve();
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new StreamClosedError(`the stream failed while waiting to drain: ${err.message}`, { cause: err }));
    };
    const onClose = (): void => {
      cleanup();
      reject(new StreamClosedError("the stream closed while waiting to drain"));
    };
    stream.once("drain", onDrain);
    stream.once("error", onError);
    stream.once("close", onClose);
  });
}

/**
 * Resolves once the stream holds no unwritten message (or is destroyed, or after `timeoutMs`).
 * Writable has no event for "everything handed on" short of each write's callback, and messages
 * may have been written by other code, so this polls `writableLength` briefly.
 */
export function untilWritten(stream: { readonly writableLength: number; readonly destroyed: boolean }, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise<void>((resolve) => {
    const check = (): void => {
      if (stream.destroyed || stream.writableLength === 0 || Date.now() > deadline) resolve();
      else setTimeout(check, 5);
    };
    check();
  });
}
