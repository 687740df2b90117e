/**
 * Incremental parser of the transmission-phase reply stream (simple and structured replies).
 *
 * Push-based: `feed()` is called with each received Buffer and parses as far as the bytes allow,
 * keeping its position in a small state machine, so a reply may be split anywhere across socket
 * reads. READ payload is copied once, straight from the received Buffer into the destination of the
 * matching request. Every length is validated against the request before anything is buffered or
 * allocated; any violation throws NbdProtocolError, which the client treats as fatal for the
 * connection (the stream can no longer be framed safely).
 */
import { ByteQueue } from "./byteQueue.js";
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_READ,
  NBD_MAX_BLOCK_STATUS_DESCRIPTORS,
  NBD_MAX_ERROR_CHUNK_BYTES,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR_BIT,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_BYTES,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_HEADER_BYTES,
  NBD_STRUCTURED_REPLY_MAGIC,
  chunkTypeName,
  commandName,
  errnoName,
  hex,
} from "./constants.js";
import { NbdCommandError, NbdProtocolError } from "./errors.js";
import { Coverage, type InFlight, type ReplySink } from "./inFlight.js";
import { parseBlockStatusChunk, parseErrorChunk } from "./replyChunks.js";

const S_HEADER = 0;
const S_SIMPLE_READ_PAYLOAD = 1;
const S_DATA_OFFSET = 2;
const S_DATA_PAYLOAD = 3;
const S_CHUNK_PAYLOAD = 4;

export class ReplyReader {
  private state = S_HEADER;
  private req: InFlight | undefined;
  private chunkFlags = 0;
  private chunkType = 0;
  private chunkLength = 0;
  private chunkStart = 0;
  private dstPos = 0;
  private remaining = 0;

  constructor(
    private readonly queue: ByteQueue,
    private readonly sink: ReplySink,
    private readonly structured: boolean,
    /** Negotiated meta contexts, id -> name. */
    private readonly contexts: ReadonlyMap<number, string>,
    private readonly target: string,
  ) {}

  /** Parses everything `buf` (plus earlier leftovers) allows. Throws NbdProtocolError on bad input. */
  feed(buf: Buffer): void {
    this.queue.push(buf);
    while (this.step());
  }

  /** As feed(), for a Buffer whose memory is reused after this call: unparsed bytes are copied. */
  feedTransient(buf: Buffer): void {
    this.queue.push(buf);
    try {
      while (this.step());
    } finally {
      this.queue.own(buf);
    }
  }

  /**
   * Where the next socket read may land directly: the unfilled part of the READ payload being
   * received, when nothing is queued ahead of it and at least `minBytes` are still expected.
   */
  directTarget(minBytes: number): Buffer | undefined {
    if ((this.state !== S_DATA_PAYLOAD && this.state !== S_SIMPLE_READ_PAYLOAD) || this.queue.length > 0) return undefined;
    if (this.remaining < minBytes) return undefined;
    return this.req!.buffer!.subarray(this.dstPos, this.dstPos + this.remaining);
  }

  /**
   * Between replies with nothing queued: the bytes of a READ reply's header (for structured
   * replies the chunk header and its 8-byte offset), so a socket read stops right before the
   * payload, which then lands directly. Over-reading a shorter reply is harmless.
   */
  headerBytesHint(): number | undefined {
    if (this.state !== S_HEADER || this.queue.length > 0) return undefined;
    return this.structured ? NBD_STRUCTURED_HEADER_BYTES + 8 : NBD_SIMPLE_REPLY_BYTES;
  }

  /** `n` bytes were received straight into the last directTarget(). */
  commitDirect(n: number): void {
    this.queue.consumedExternally(n);
    this.advancePayload(n);
  }

  /** `n` more bytes of the READ payload being received are in its destination. */
  private advancePayload(n: number): void {
    const req = this.req!;
    this.dstPos += n;
    this.remaining -= n;
    req.received += n;
    if (this.remaining === 0) {
      if (this.state === S_SIMPLE_READ_PAYLOAD) this.finish(req);
      else this.chunkDone();
    }
  }

  /** Parses already-queued bytes (e.g. left over from the handshake). */
  drain(): void {
    while (this.step());
  }

  /** Where the stream stopped, for the message of a connection that closed under us. */
  describeProgress(): string {
    const req = this.req;
    if (this.state === S_HEADER) {
      const partial = this.queue.length;
      return partial > 0 ? `${partial} bytes into a reply header` : "between replies";
    }
    if (req === undefined) return "mid-reply";
    if (req.command === NBD_CMD_READ) {
      return `after ${req.received} of ${req.length} bytes of a READ reply (offset ${req.offset})`;
    }
    return `in the middle of a ${commandName(req.command)} reply`;
  }

  private step(): boolean {
    const q = this.queue;
    switch (this.state) {
      case S_HEADER: {
        if (q.length < 4) return false;
        const magic = q.peekUInt32BE();
        if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
          if (q.length < NBD_STRUCTURED_HEADER_BYTES) return false;
          this.structuredHeader();
        } else if (magic === NBD_SIMPLE_REPLY_MAGIC) {
          if (q.length < NBD_SIMPLE_REPLY_BYTES) return false;
          this.simpleReply();
        } else {
          throw new NbdProtocolError(
            `NBD reply magic ${hex(magic)} at stream offset ${q.consumed} from ${this.target} is neither simple ` +
              `(${hex(NBD_SIMPLE_REPLY_MAGIC)}) nor structured (${hex(NBD_STRUCTURED_REPLY_MAGIC)})`,
          );
        }
        return true;
      }
      case S_SIMPLE_READ_PAYLOAD:
      case S_DATA_PAYLOAD: {
        const n = Math.min(this.remaining, q.length);
        if (n === 0) return false;
        q.copyTo(this.req!.buffer!, this.dstPos, n);
        this.advancePayload(n);
        return true;
      }
      case S_DATA_OFFSET: {
        if (q.length < 8) return false;
        this.dataOffset(q.readUInt64());
        return true;
      }
      case S_CHUNK_PAYLOAD: {
        if (q.length < this.chunkLength) return false;
        this.chunkPayload();
        return true;
      }
      default:
        throw new Error(`ReplyReader: bad state ${this.state}`);
    }
  }

  private simpleReply(): void {
    const q = this.queue;
    const at = q.consumed;
    q.skip(4);
    const errno = q.readUInt32BE();
    const cookie = q.readUInt64();
    const req = this.lookup(cookie, at);
    if (req.chunks > 0) {
      throw this.protocolError(req, `simple reply at stream offset ${at} after structured chunks of the same request`);
    }
    this.req = req;
    if (req.command === NBD_CMD_READ && this.structured) {
      // The spec forbids it (even for errors), and whether a payload follows would be a guess.
      throw this.protocolError(req, `simple reply at stream offset ${at}, but structured replies were negotiated`);
    }
    if (errno !== 0) {
      // Simple-mode READ errors carry no payload in practice (QEMU, libnbd), whatever the spec says.
      req.error = this.commandError(req, errno, "");
      this.finish(req);
    } else if (req.command === NBD_CMD_READ) {
      this.state = S_SIMPLE_READ_PAYLOAD;
      this.dstPos = 0;
      this.remaining = req.length;
      if (this.remaining === 0) this.finish(req);
    } else if (req.command === NBD_CMD_BLOCK_STATUS) {
      throw this.protocolError(req, `simple success reply at stream offset ${at}; block status needs a BLOCK_STATUS chunk`);
    } else {
      this.finish(req);
    }
  }

  private structuredHeader(): void {
    const q = this.queue;
    const at = q.consumed;
    q.skip(4);
    const flags = q.readUInt16BE();
    const type = q.readUInt16BE();
    const cookie = q.readUInt64();
    const length = q.readUInt32BE();
    if (!this.structured) {
      throw new NbdProtocolError(`NBD structured reply chunk at stream offset ${at} from ${this.target}, but structured replies were not negotiated`);
    }
    const req = this.lookup(cookie, at);
    this.req = req;
    this.chunkFlags = flags;
    this.chunkType = type;
    this.chunkLength = length;
    this.chunkStart = at;
    const what = `${chunkTypeName(type)} chunk (length ${length}) at stream offset ${at}`;
    const isRead = req.command === NBD_CMD_READ;

    if (type === NBD_REPLY_TYPE_OFFSET_DATA) {
      if (!isRead) throw this.protocolError(req, `${what}: only READ replies carry data`);
      if (length < 8 || length - 8 > req.length) {
        throw this.protocolError(req, `${what}: expected 8 bytes of offset plus at most ${req.length} bytes of data`);
      }
      this.state = S_DATA_OFFSET;
      return;
    }
    if (type === NBD_REPLY_TYPE_NONE) {
      if (length !== 0 || !(flags & NBD_REPLY_FLAG_DONE)) {
        throw this.protocolError(req, `${what}: a NONE chunk must be empty and carry the DONE flag`);
      }
    } else if (type === NBD_REPLY_TYPE_OFFSET_HOLE) {
      if (!isRead) throw this.protocolError(req, `${what}: only READ replies carry holes`);
      if (length !== 12) throw this.protocolError(req, `${what}: expected exactly 12 bytes (offset, size)`);
    } else if (type === NBD_REPLY_TYPE_BLOCK_STATUS) {
      if (req.command !== NBD_CMD_BLOCK_STATUS) throw this.protocolError(req, `${what}: not a BLOCK_STATUS request`);
      if (length < 12 || (length - 4) % 8 !== 0 || length > 4 + 8 * NBD_MAX_BLOCK_STATUS_DESCRIPTORS) {
        throw this.protocolError(req, `${what}: payload must be a 4-byte context id plus 1 to ${NBD_MAX_BLOCK_STATUS_DESCRIPTORS} 8-byte descriptors`);
      }
    } else if (type & NBD_REPLY_TYPE_ERROR_BIT) {
      if (length < 6 || length > NBD_MAX_ERROR_CHUNK_BYTES) {
        throw this.protocolError(req, `${what}: an error chunk holds 6 to ${NBD_MAX_ERROR_CHUNK_BYTES} bytes`);
      }
    } else {
      throw this.protocolError(req, `${what}: unknown chunk type`);
    }
    this.state = S_CHUNK_PAYLOAD;
  }

  private dataOffset(offset: number): void {
    const req = this.req!;
    const dataLength = this.chunkLength - 8;
    const rel = offset - req.offset;
    if (rel < 0 || rel + dataLength > req.length) {
      throw this.protocolError(
        req,
        `OFFSET_DATA chunk at stream offset ${this.chunkStart} covers [${offset}, ${offset + dataLength}), ` +
          `outside the requested range [${req.offset}, ${req.offset + req.length})`,
      );
    }
    this.cover(req, rel, dataLength, "OFFSET_DATA");
    this.dstPos = rel;
    this.remaining = dataLength;
    this.state = S_DATA_PAYLOAD;
    if (dataLength === 0) this.chunkDone();
  }

  private chunkPayload(): void {
    const req = this.req!;
    const q = this.queue;
    const type = this.chunkType;
    if (type === NBD_REPLY_TYPE_NONE) {
      // nothing to read
    } else if (type === NBD_REPLY_TYPE_OFFSET_HOLE) {
      const offset = q.readUInt64();
      const size = q.readUInt32BE();
      const rel = offset - req.offset;
      if (size === 0 || rel < 0 || rel + size > req.length) {
        throw this.protocolError(
          req,
          `OFFSET_HOLE chunk at stream offset ${this.chunkStart} covers [${offset}, ${offset + size}), ` +
            `not a non-empty part of the requested range [${req.offset}, ${req.offset + req.length})`,
        );
      }
      this.cover(req, rel, size, "OFFSET_HOLE");
      req.buffer!.fill(0, rel, rel + size);
      req.received += size;
    } else if (type === NBD_REPLY_TYPE_BLOCK_STATUS) {
      parseBlockStatusChunk(req, q.take(this.chunkLength), this.contexts, (detail) => this.protocolError(req, detail));
    } else {
      const { errno, message } = parseErrorChunk(req, this.chunkType, q.take(this.chunkLength), (detail) =>
        this.protocolError(req, `${chunkTypeName(this.chunkType)} chunk at stream offset ${this.chunkStart}: ${detail}`),
      );
      req.error ??= this.commandError(req, errno, message);
    }
    this.chunkDone();
  }

  private chunkDone(): void {
    const req = this.req!;
    req.chunks++;
    this.state = S_HEADER;
    if (this.chunkFlags & NBD_REPLY_FLAG_DONE) this.finish(req);
  }

  private finish(req: InFlight): void {
    this.state = S_HEADER;
    this.req = undefined;
    if (req.error === undefined && this.structured) {
      if (req.command === NBD_CMD_READ && req.received !== req.length) {
        throw this.protocolError(req, `reply ended (DONE) with ${req.received} of ${req.length} bytes covered`);
      }
      if (req.command === NBD_CMD_BLOCK_STATUS && req.extents === undefined) {
        const name = this.contexts.get(req.contextId ?? -1) ?? String(req.contextId);
        throw this.protocolError(req, `reply ended (DONE) without a BLOCK_STATUS chunk for meta context "${name}"`);
      }
    }
    this.sink.complete(req);
  }

  private cover(req: InFlight, rel: number, length: number, what: string): void {
    const coverage = (req.coverage ??= new Coverage());
    if (!coverage.add(rel, length)) {
      const start = req.offset + rel;
      throw this.protocolError(req, `${what} chunk [${start}, ${start + length}) overlaps data already received`);
    }
  }

  private lookup(cookie: number, at: number): InFlight {
    const req = this.sink.lookup(cookie);
    if (req !== undefined) return req;
    const why = this.sink.wasIssued(cookie) ? "whose request already completed (a reply after DONE?)" : "which matches no request ever sent";
    throw new NbdProtocolError(`NBD reply at stream offset ${at} from ${this.target} carries cookie ${cookie}, ${why}`);
  }

  private protocolError(req: InFlight, detail: string): NbdProtocolError {
    return new NbdProtocolError(`NBD ${commandName(req.command)} reply for [${req.offset}, ${req.offset + req.length}) from ${this.target}: ${detail}`);
  }

  private commandError(req: InFlight, errno: number, message: string): NbdCommandError {
    const name = errnoName(errno);
    const cmd = commandName(req.command);
    return new NbdCommandError(
      `NBD ${cmd} of ${req.length} bytes at offset ${req.offset} failed on ${this.target}: ${name} (${errno})` + (message ? `: ${message}` : ""),
      cmd,
      req.offset,
      req.length,
      errno,
      name,
      message,
    );
  }
}
