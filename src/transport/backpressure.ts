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
export function writeWithBackpressure<T>(stream: BackpressureWritable<T>, message: T, opts: { onWritten?: () => void } = {}): Promise<void> {
  const previous = queues.get(stream) ?? Promise.resolve();
  const next = previous.then(() => writeOne(stream, message, opts.onWritten));
  // A failed write fails the stream; later writes then fail on their own checks, so the chain
  // itself must not stay rejected.
  queues.set(
    stream,
    next.catch(() => undefined),
  );
  return next;
}

/** `onWritten` runs once the stream is done with `message` (grpc-js: serialized and handed to HTTP/2), or failed. */
async function writeOne<T>(stream: BackpressureWritable<T>, message: T, onWritten?: () => void): Promise<void> {
  ensureOpen(stream);
  // Someone wrote to this stream directly and filled it: wait rather than add to the pile.
  if (stream.writableNeedDrain) await drained(stream);
  ensureOpen(stream);
  if (!stream.write(message, onWritten && (() => onWritten()))) await drained(stream);
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
