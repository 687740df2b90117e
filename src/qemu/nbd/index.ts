export { NbdClient, type NbdConnectOptions } from "./client.js";
export type { NbdExtent } from "./inFlight.js";
export type { BlockSize } from "./handshake.js";
export {
  NbdProtocolError,
  NbdOptionError,
  NbdCommandError,
  NbdTimeoutError,
  NbdClosedError,
  NbdConnectError,
  NbdUnsupportedError,
  NbdReadOnlyError,
  NbdRequestError,
  type NbdError,
} from "./errors.js";
export {
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NBD_STATE_DIRTY,
  NBD_MAX_REQUEST_BYTES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_CAN_MULTI_CONN,
} from "./constants.js";
export { knownZeroChunks, knownZeroRanges, BASE_ALLOCATION_CONTEXT } from "./zeroChunks.js";
export { EFFICIENT_READ_BYTES, readInPieces, startPieceReads, type PieceReadOptions } from "./pieceRead.js";
