/**
 * Fixed-newstyle negotiation: greeting, STRUCTURED_REPLY, SET_META_CONTEXT, GO.
 * Pull-based (await enough bytes, then parse): the handshake is strictly request/response and
 * small, unlike the transmission phase (see replyReader.ts).
 */
import { ByteQueue } from "./byteQueue.js";
import {
  DEFAULT_BLOCK_SIZE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_MAGIC_IHAVEOPT,
  NBD_MAGIC_NBDMAGIC,
  NBD_MAGIC_OLDSTYLE,
  NBD_MAGIC_OPTION_REPLY,
  NBD_MAX_OPTION_REPLY_BYTES,
  NBD_OPT_ABORT,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  hex,
  optionErrorName,
  optionName,
} from "./constants.js";
import { NbdOptionError, NbdProtocolError, NbdRequestError, NbdUnsupportedError } from "./errors.js";

/** What the handshake needs from the socket. `need` rejects on close or timeout. */
export interface HandshakeIo {
  readonly queue: ByteQueue;
  readonly target: string;
  need(bytes: number, what: string): Promise<void>;
  write(buf: Buffer): void;
}

export interface BlockSize {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface NegotiatedExport {
  exportName: string;
  size: number;
  transmissionFlags: number;
  blockSize: BlockSize;
  structuredReplies: boolean;
  metaContextIds: Map<string, number>;
}

/** The spec caps export and meta context names at 4096 bytes. */
const MAX_NAME_BYTES = 4096;

interface OptionReply {
  type: number;
  data: Buffer;
}

export async function negotiate(io: HandshakeIo, exportName: string, metaContexts: readonly string[]): Promise<NegotiatedExport> {
  checkName(exportName, "export name");
  for (const ctx of metaContexts) checkName(ctx, "meta context name");

  const handshakeFlags = await readGreeting(io);
  let clientFlags = NBD_FLAG_C_FIXED_NEWSTYLE;
  if (handshakeFlags & NBD_FLAG_NO_ZEROES) clientFlags |= NBD_FLAG_C_NO_ZEROES;
  const flagsBuf = Buffer.alloc(4);
  flagsBuf.writeUInt32BE(clientFlags);
  io.write(flagsBuf);

  try {
    const structuredReplies = await negotiateStructuredReplies(io);
    const metaContextIds = structuredReplies && metaContexts.length > 0 ? await setMetaContexts(io, exportName, metaContexts) : new Map<string, number>();
    const info = await go(io, exportName);
    return { exportName, structuredReplies, metaContextIds, ...info };
  } catch (err) {
    if (err instanceof NbdOptionError || err instanceof NbdUnsupportedError) {
      // Still in a well-framed state: tell the server we are leaving rather than just vanishing.
      io.write(encodeOption(NBD_OPT_ABORT, Buffer.alloc(0)));
    }
    throw err;
  }
}

async function readGreeting(io: HandshakeIo): Promise<number> {
  await io.need(16, "the server greeting");
  const magic = io.queue.readBigUInt64BE();
  if (magic !== NBD_MAGIC_NBDMAGIC) {
    throw new NbdProtocolError(`${io.target} is not an NBD server: greeting starts with ${hex(magic, 16)}, expected NBDMAGIC (${hex(NBD_MAGIC_NBDMAGIC, 16)})`);
  }
  const second = io.queue.readBigUInt64BE();
  if (second === NBD_MAGIC_OLDSTYLE) {
    throw new NbdUnsupportedError(`NBD server at ${io.target} speaks the oldstyle handshake; only fixed newstyle is supported (QEMU >= 2.6 uses it)`);
  }
  if (second !== NBD_MAGIC_IHAVEOPT) {
    throw new NbdProtocolError(`NBD greeting from ${io.target}: expected IHAVEOPT (${hex(NBD_MAGIC_IHAVEOPT, 16)}) after NBDMAGIC, got ${hex(second, 16)}`);
  }
  await io.need(2, "the handshake flags");
  const flags = io.queue.readUInt16BE();
  if (!(flags & NBD_FLAG_FIXED_NEWSTYLE)) {
    throw new NbdUnsupportedError(`NBD server at ${io.target} does not offer the fixed newstyle handshake (flags ${hex(flags, 4)})`);
  }
  return flags;
}

async function negotiateStructuredReplies(io: HandshakeIo): Promise<boolean> {
  io.write(encodeOption(NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)));
  const reply = await readOptionReply(io, NBD_OPT_STRUCTURED_REPLY);
  if (reply.type === NBD_REP_ACK) return true;
  if (reply.type & NBD_REP_FLAG_ERROR) return false; // fall back to simple replies
  throw unexpectedReply(io, NBD_OPT_STRUCTURED_REPLY, reply.type);
}

async function setMetaContexts(io: HandshakeIo, exportName: string, contexts: readonly string[]): Promise<Map<string, number>> {
  const name = Buffer.from(exportName, "utf8");
  const queries = contexts.map((c) => Buffer.from(c, "utf8"));
  const parts: Buffer[] = [u32(name.length), name, u32(queries.length)];
  for (const q of queries) parts.push(u32(q.length), q);
  io.write(encodeOption(NBD_OPT_SET_META_CONTEXT, Buffer.concat(parts)));

  const ids = new Map<string, number>();
  const byId = new Map<number, string>();
  for (;;) {
    const reply = await readOptionReply(io, NBD_OPT_SET_META_CONTEXT);
    if (reply.type === NBD_REP_ACK) return ids;
    if (reply.type & NBD_REP_FLAG_ERROR) throw optionError(io, NBD_OPT_SET_META_CONTEXT, reply, exportName);
    if (reply.type !== NBD_REP_META_CONTEXT) throw unexpectedReply(io, NBD_OPT_SET_META_CONTEXT, reply.type);
    if (reply.data.length < 5) {
      throw new NbdProtocolError(`NBD_REP_META_CONTEXT from ${io.target} is ${reply.data.length} bytes; expected a 4-byte id and a name`);
    }
    const id = reply.data.readUInt32BE(0);
    const ctx = reply.data.toString("utf8", 4);
    const clash = byId.get(id);
    if (clash !== undefined && clash !== ctx) {
      throw new NbdProtocolError(`NBD server at ${io.target} gave meta context id ${id} to both "${clash}" and "${ctx}"`);
    }
    byId.set(id, ctx);
    ids.set(ctx, id);
  }
}

async function go(io: HandshakeIo, exportName: string): Promise<Omit<NegotiatedExport, "exportName" | "structuredReplies" | "metaContextIds">> {
  const name = Buffer.from(exportName, "utf8");
  const infoReq = Buffer.alloc(4);
  infoReq.writeUInt16BE(1, 0);
  infoReq.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 2);
  io.write(encodeOption(NBD_OPT_GO, Buffer.concat([u32(name.length), name, infoReq])));

  let size: number | undefined;
  let transmissionFlags = 0;
  let blockSize: BlockSize = { ...DEFAULT_BLOCK_SIZE };
  for (;;) {
    const reply = await readOptionReply(io, NBD_OPT_GO);
    if (reply.type === NBD_REP_ACK) break;
    if (reply.type & NBD_REP_FLAG_ERROR) throw optionError(io, NBD_OPT_GO, reply, exportName);
    if (reply.type !== NBD_REP_INFO) throw unexpectedReply(io, NBD_OPT_GO, reply.type);
    const data = reply.data;
    if (data.length < 2) throw new NbdProtocolError(`NBD_REP_INFO from ${io.target} is ${data.length} bytes, shorter than its type field`);
    const infoType = data.readUInt16BE(0);
    if (infoType === NBD_INFO_EXPORT) {
      expectInfoLength(io, "NBD_INFO_EXPORT", data, 12);
      const hi = data.readUInt32BE(2);
      const lo = data.readUInt32BE(6);
      const bytes = hi * 0x1_0000_0000 + lo;
      if (bytes > Number.MAX_SAFE_INTEGER) {
        throw new NbdUnsupportedError(`export "${exportName}" at ${io.target} is ${data.readBigUInt64BE(2)} bytes, beyond what this client can address (2^53-1)`);
      }
      size = bytes;
      transmissionFlags = data.readUInt16BE(10);
    } else if (infoType === NBD_INFO_BLOCK_SIZE) {
      expectInfoLength(io, "NBD_INFO_BLOCK_SIZE", data, 14);
      blockSize = { minimum: data.readUInt32BE(2), preferred: data.readUInt32BE(6), maximum: data.readUInt32BE(10) };
      const { minimum, preferred, maximum } = blockSize;
      if (minimum < 1 || preferred < minimum || maximum < minimum) {
        throw new NbdProtocolError(`NBD_INFO_BLOCK_SIZE from ${io.target} is inconsistent: minimum ${minimum}, preferred ${preferred}, maximum ${maximum}`);
      }
    }
    // NBD_INFO_NAME, NBD_INFO_DESCRIPTION and future items are informational: skip.
  }
  if (size === undefined) {
    throw new NbdProtocolError(`NBD server at ${io.target} acknowledged NBD_OPT_GO without sending NBD_INFO_EXPORT`);
  }
  if (!(transmissionFlags & NBD_FLAG_HAS_FLAGS)) {
    throw new NbdProtocolError(`NBD server at ${io.target} sent transmission flags ${hex(transmissionFlags, 4)} without NBD_FLAG_HAS_FLAGS`);
  }
  return { size, transmissionFlags, blockSize };
}

async function readOptionReply(io: HandshakeIo, option: number): Promise<OptionReply> {
  const what = `the reply to ${optionName(option)}`;
  await io.need(20, what);
  const q = io.queue;
  const at = q.consumed;
  const magic = q.readBigUInt64BE();
  if (magic !== NBD_MAGIC_OPTION_REPLY) {
    throw new NbdProtocolError(
      `NBD option reply magic ${hex(magic, 16)} at stream offset ${at} from ${io.target} is not ${hex(NBD_MAGIC_OPTION_REPLY, 16)} (while waiting for ${what})`,
    );
  }
  const opt = q.readUInt32BE();
  const type = q.readUInt32BE();
  const length = q.readUInt32BE();
  if (opt !== option) {
    throw new NbdProtocolError(`NBD server at ${io.target} replied to ${optionName(opt)} while ${what} was expected`);
  }
  if (length > NBD_MAX_OPTION_REPLY_BYTES) {
    throw new NbdProtocolError(`NBD option reply to ${optionName(option)} from ${io.target} claims ${length} bytes of data; refusing more than ${NBD_MAX_OPTION_REPLY_BYTES}`);
  }
  await io.need(length, what);
  // Copy: the queue may share memory with socket buffers and we keep strings from it.
  const data = Buffer.from(q.take(length));
  return { type, data };
}

function optionError(io: HandshakeIo, option: number, reply: OptionReply, exportName: string): NbdOptionError {
  const errName = optionErrorName(reply.type);
  const serverMessage = reply.data.toString("utf8");
  const said = serverMessage ? `: "${serverMessage}"` : "";
  let hint = "";
  if (reply.type === NBD_REP_ERR_UNKNOWN && option === NBD_OPT_GO) {
    hint = ` — export "${exportName}" not found; check the export name (QSD --export ...,name=)`;
  } else if (reply.type === NBD_REP_ERR_UNKNOWN && option === NBD_OPT_SET_META_CONTEXT) {
    hint = ` — export "${exportName}" not found; check the export name`;
  } else if (reply.type === NBD_REP_ERR_TLS_REQD) {
    hint = " — the server requires TLS, which this client does not speak";
  }
  return new NbdOptionError(`NBD server at ${io.target} refused ${optionName(option)} with ${errName}${said}${hint}`, optionName(option), errName, serverMessage);
}

function unexpectedReply(io: HandshakeIo, option: number, type: number): NbdProtocolError {
  return new NbdProtocolError(`NBD server at ${io.target} answered ${optionName(option)} with unexpected reply type ${hex(type)}`);
}

function expectInfoLength(io: HandshakeIo, name: string, data: Buffer, expected: number): void {
  if (data.length !== expected) {
    throw new NbdProtocolError(`${name} from ${io.target} is ${data.length} bytes, expected ${expected}`);
  }
}

function checkName(name: string, what: string): void {
  const bytes = Buffer.byteLength(name, "utf8");
  if (bytes > MAX_NAME_BYTES) {
    throw new NbdRequestError(`NBD ${what} is ${bytes} bytes; the protocol allows at most ${MAX_NAME_BYTES}`);
  }
}

export function encodeOption(option: number, data: Buffer): Buffer {
  const buf = Buffer.allocUnsafe(16 + data.length);
  buf.writeBigUInt64BE(NBD_MAGIC_IHAVEOPT, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(data.length, 12);
  data.copy(buf, 16);
  return buf;
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n);
  return b;
}
