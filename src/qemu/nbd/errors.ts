import { QreplicaError } from "../../common/errors.js";

/**
 * The server sent something the protocol does not allow (bad magic, impossible length, a chunk that
 * does not belong to the command, an unknown cookie...). The connection is unusable afterwards:
 * every pending request is rejected and the socket is closed.
 */
export class NbdProtocolError extends QreplicaError {
  readonly code = "NBD_PROTOCOL" as const;
}

/** The server refused a handshake option (export unknown, TLS required, ...). */
export class NbdOptionError extends QreplicaError {
  readonly code = "NBD_OPTION_REFUSED" as const;
  constructor(
    message: string,
    readonly option: string,
    readonly serverError: string,
    readonly serverMessage: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The server answered a command with an error (an errno). The connection stays usable. */
export class NbdCommandError extends QreplicaError {
  readonly code = "NBD_COMMAND_FAILED" as const;
  constructor(
    message: string,
    readonly command: string,
    readonly offset: number,
    readonly length: number,
    readonly errno: number,
    readonly errnoName: string,
    readonly serverMessage: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The handshake or a request did not complete in time. A timed-out request also closes the connection. */
export class NbdTimeoutError extends QreplicaError {
  readonly code = "NBD_TIMEOUT" as const;
}

/** The connection is closed, or closed under us (possibly mid-reply). */
export class NbdClosedError extends QreplicaError {
  readonly code = "NBD_CLOSED" as const;
}

/** The socket could not be opened at all. */
export class NbdConnectError extends QreplicaError {
  readonly code = "NBD_CONNECT_FAILED" as const;
}

/** The export does not offer what was asked (flush, write zeroes, FUA, block status, a meta context...). */
export class NbdUnsupportedError extends QreplicaError {
  readonly code = "NBD_UNSUPPORTED" as const;
}

/** A write-type command on an export the server declared read-only; nothing was sent. */
export class NbdReadOnlyError extends QreplicaError {
  readonly code = "NBD_READ_ONLY" as const;
}

/** The caller asked for something invalid (range past the end, too large, misaligned); nothing was sent. */
export class NbdRequestError extends QreplicaError {
  readonly code = "NBD_INVALID_REQUEST" as const;
}

export type NbdError =
  | NbdProtocolError
  | NbdOptionError
  | NbdCommandError
  | NbdTimeoutError
  | NbdClosedError
  | NbdConnectError
  | NbdUnsupportedError
  | NbdReadOnlyError
  | NbdRequestError;
