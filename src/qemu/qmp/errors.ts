import { QreplicaError } from "../../common/errors.js";

/** QEMU answered a command with `{"error": {"class", "desc"}}`. */
export class QmpCommandError extends QreplicaError {
  readonly code = "QMP_COMMAND_FAILED" as const;
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly description: string,
  ) {
    super(`QMP command '${command}' failed: ${errorClass}: ${description}`);
  }
}

/** No reply within the command's deadline; the monitor connection is closed afterwards. */
export class QmpTimeoutError extends QreplicaError {
  readonly code = "QMP_TIMEOUT" as const;
  constructor(
    readonly command: string,
    readonly timeoutMs: number,
    readonly socketPath: string,
  ) {
    super(`QMP command '${command}' got no reply from ${socketPath} within ${timeoutMs} ms: is QEMU hung or paused in a debugger?`);
  }
}

/** Cannot reach the monitor socket, or the greeting never came. */
export class QmpConnectError extends QreplicaError {
  readonly code = "QMP_CONNECT_FAILED" as const;
  constructor(
    readonly socketPath: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(
      `cannot open QMP monitor ${socketPath}: ${detail}. Check that QEMU runs with ` +
        `'-chardev socket,id=mon,path=${socketPath},server=on,wait=off -mon chardev=mon,mode=control' ` +
        `and that no other client holds this monitor (QEMU serves one client per monitor)`,
      options,
    );
  }
}

/** The monitor connection ended (QEMU quit or crashed) while commands were pending. */
export class QmpClosedError extends QreplicaError {
  readonly code = "QMP_CLOSED" as const;
  constructor(
    readonly socketPath: string,
    readonly command?: string,
  ) {
    super(command ? `QMP monitor ${socketPath} closed before '${command}' was answered (QEMU exited?)` : `QMP monitor ${socketPath} is closed`);
  }
}

/** QEMU sent something that is not QMP: a line that is not JSON, too long, or of unknown shape. */
export class QmpProtocolError extends QreplicaError {
  readonly code = "QMP_PROTOCOL" as const;
  constructor(
    readonly socketPath: string,
    detail: string,
  ) {
    super(`QMP protocol error on ${socketPath}: ${detail}`);
  }
}
