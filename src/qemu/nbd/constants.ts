/**
 * NBD wire constants (fixed newstyle handshake, simple and structured replies).
 * Source: NetworkBlockDevice/nbd doc/proto.md; see also reference/qemu-dirty-bitmaps.md §3.3.
 * Everything on the wire is big-endian.
 */

export const NBD_MAGIC_NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const NBD_MAGIC_IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
/** Sent instead of IHAVEOPT by pre-newstyle servers, which we do not support. */
export const NBD_MAGIC_OLDSTYLE = 0x00420281861253n;
export const NBD_MAGIC_OPTION_REPLY = 0x3e889045565a9n;

export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const NBD_REQUEST_HEADER_BYTES = 28;
export const NBD_SIMPLE_REPLY_BYTES = 16;
export const NBD_STRUCTURED_HEADER_BYTES = 20;

// Handshake flags (server) and client flags.
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Options.
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

export const OPTION_NAMES: Readonly<Record<number, string>> = {
  [NBD_OPT_EXPORT_NAME]: "NBD_OPT_EXPORT_NAME",
  [NBD_OPT_ABORT]: "NBD_OPT_ABORT",
  [NBD_OPT_LIST]: "NBD_OPT_LIST",
  [NBD_OPT_STARTTLS]: "NBD_OPT_STARTTLS",
  [NBD_OPT_INFO]: "NBD_OPT_INFO",
  [NBD_OPT_GO]: "NBD_OPT_GO",
  [NBD_OPT_STRUCTURED_REPLY]: "NBD_OPT_STRUCTURED_REPLY",
  [NBD_OPT_LIST_META_CONTEXT]: "NBD_OPT_LIST_META_CONTEXT",
  [NBD_OPT_SET_META_CONTEXT]: "NBD_OPT_SET_META_CONTEXT",
  [NBD_OPT_EXTENDED_HEADERS]: "NBD_OPT_EXTENDED_HEADERS",
};

// Option reply types; errors have bit 31 set.
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_FLAG_ERROR = 0x8000_0000;

export const OPTION_ERROR_NAMES: Readonly<Record<number, string>> = {
  [NBD_REP_FLAG_ERROR + 1]: "NBD_REP_ERR_UNSUP",
  [NBD_REP_FLAG_ERROR + 2]: "NBD_REP_ERR_POLICY",
  [NBD_REP_FLAG_ERROR + 3]: "NBD_REP_ERR_INVALID",
  [NBD_REP_FLAG_ERROR + 4]: "NBD_REP_ERR_PLATFORM",
  [NBD_REP_FLAG_ERROR + 5]: "NBD_REP_ERR_TLS_REQD",
  [NBD_REP_FLAG_ERROR + 6]: "NBD_REP_ERR_UNKNOWN",
  [NBD_REP_FLAG_ERROR + 7]: "NBD_REP_ERR_SHUTDOWN",
  [NBD_REP_FLAG_ERROR + 8]: "NBD_REP_ERR_BLOCK_SIZE_REQD",
  [NBD_REP_FLAG_ERROR + 9]: "NBD_REP_ERR_TOO_BIG",
  [NBD_REP_FLAG_ERROR + 10]: "NBD_REP_ERR_EXT_HEADER_REQD",
};
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;

// NBD_INFO_* items carried by NBD_REP_INFO.
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// Transmission flags.
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// Commands.
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const COMMAND_NAMES: Readonly<Record<number, string>> = {
  [NBD_CMD_READ]: "READ",
  [NBD_CMD_WRITE]: "WRITE",
  [NBD_CMD_DISC]: "DISC",
  [NBD_CMD_FLUSH]: "FLUSH",
  [NBD_CMD_TRIM]: "TRIM",
  [NBD_CMD_CACHE]: "CACHE",
  [NBD_CMD_WRITE_ZEROES]: "WRITE_ZEROES",
  [NBD_CMD_BLOCK_STATUS]: "BLOCK_STATUS",
};

// Command flags.
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and chunk types.
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;
export const NBD_REPLY_TYPE_ERROR_BIT = 1 << 15;

export const CHUNK_TYPE_NAMES: Readonly<Record<number, string>> = {
  [NBD_REPLY_TYPE_NONE]: "NONE",
  [NBD_REPLY_TYPE_OFFSET_DATA]: "OFFSET_DATA",
  [NBD_REPLY_TYPE_OFFSET_HOLE]: "OFFSET_HOLE",
  [NBD_REPLY_TYPE_BLOCK_STATUS]: "BLOCK_STATUS",
  6: "BLOCK_STATUS_EXT",
  [NBD_REPLY_TYPE_ERROR]: "ERROR",
  [NBD_REPLY_TYPE_ERROR_OFFSET]: "ERROR_OFFSET",
};

/** NBD error values are a fixed subset of errno numbers, independent of the host OS. */
export const NBD_ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: "EPERM",
  5: "EIO",
  12: "ENOMEM",
  22: "EINVAL",
  28: "ENOSPC",
  75: "EOVERFLOW",
  95: "ENOTSUP",
  108: "ESHUTDOWN",
};

// base:allocation status bits, and the dirty bit of qemu:dirty-bitmap:NAME.
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
export const NBD_STATE_DIRTY = 1 << 0;

// Client-side limits.
/** Never move more than this in one READ/WRITE, whatever the server advertises (QEMU's own cap). */
export const NBD_MAX_REQUEST_BYTES = 32 * 1024 * 1024;
/** Cap for option replies and non-data chunks: bounds what a hostile/buggy server makes us buffer. */
export const NBD_MAX_OPTION_REPLY_BYTES = 64 * 1024;
/** Servers send at most 2^20 descriptors per BLOCK_STATUS chunk (spec); the payload adds the context id. */
export const NBD_MAX_BLOCK_STATUS_DESCRIPTORS = 1 << 20;
/** u16 error message + u32 errno + u16 length + optional u64 offset. */
export const NBD_MAX_ERROR_CHUNK_BYTES = 4 + 2 + 0xffff + 8;
/** Block status and zeroing lengths are u32 on the wire (no extended headers). */
export const NBD_MAX_U32_LENGTH = 0xffff_ffff;

export const DEFAULT_BLOCK_SIZE = Object.freeze({ minimum: 1, preferred: 4096, maximum: NBD_MAX_REQUEST_BYTES });

export function hex(n: number | bigint, width = 8): string {
  return "0x" + n.toString(16).padStart(width, "0");
}

export function optionName(opt: number): string {
  return OPTION_NAMES[opt] ?? `option ${opt}`;
}

export function optionErrorName(type: number): string {
  return OPTION_ERROR_NAMES[type] ?? `NBD_REP_ERR ${hex(type)}`;
}

export function commandName(cmd: number): string {
  return COMMAND_NAMES[cmd] ?? `command ${cmd}`;
}

export function chunkTypeName(type: number): string {
  return CHUNK_TYPE_NAMES[type] ?? `chunk type ${type}`;
}

export function errnoName(errno: number): string {
  return NBD_ERRNO_NAMES[errno] ?? `errno ${errno}`;
}
