import { QreplicaError } from "../../common/errors.js";

const channelHint = (socketPath: string) =>
  `Check that qemu-guest-agent runs in the guest (Linux: systemctl status qemu-guest-agent; Windows: the "QEMU Guest Agent" service) and that ${socketPath} is ` +
  `the host side of its channel: '-chardev socket,id=qga0,path=${socketPath},server=on,wait=off ` +
  `-device virtio-serial -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0'. ` +
  `QEMU serves one client per chardev, so libvirt or another tool must not hold it`;

/**
 * The agent cannot be reached: the socket is missing or refused, the channel closed, or nobody
 * answered guest-sync-delimited (the usual sign that the agent is not running in the guest).
 */
export class GuestAgentUnavailableError extends QreplicaError {
  readonly code = "GUEST_AGENT_UNAVAILABLE" as const;
  constructor(
    readonly socketPath: string,
    detail: string,
    /**
     * Whether the command had already been written when the channel failed. Callers of freeze
     * need this: a written freeze may have been carried out, so the guest must be thawed.
     */
    readonly commandWritten: boolean,
    options?: { cause?: unknown },
  ) {
    super(`qemu-guest-agent at ${socketPath} is unavailable: ${detail}. ${channelHint(socketPath)}`, options);
  }
}

/**
 * No reply within the deadline. The agent may still carry the command out later; the client
 * resynchronises before its next command, so a late reply is never taken for another's.
 */
export class GuestAgentTimeoutError extends QreplicaError {
  readonly code = "GUEST_AGENT_TIMEOUT" as const;
  constructor(
    readonly command: string,
    readonly timeoutMs: number,
    readonly socketPath: string,
  ) {
    super(`qemu-guest-agent command '${command}' got no reply from ${socketPath} within ${timeoutMs} ms`);
  }
}

/** The agent answered `{"error": {"class", "desc"}}`, e.g. CommandNotFound for a blocked RPC. */
export class GuestAgentCommandError extends QreplicaError {
  readonly code = "GUEST_AGENT_COMMAND_FAILED" as const;
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly description: string,
  ) {
    super(`qemu-guest-agent command '${command}' failed: ${errorClass}: ${description}`);
  }
}

/** The reply was not QGA: not JSON, of unknown shape, or a line above the length bound. */
export class GuestAgentProtocolError extends QreplicaError {
  readonly code = "GUEST_AGENT_PROTOCOL" as const;
  constructor(
    readonly socketPath: string,
    detail: string,
  ) {
    super(`qemu-guest-agent protocol error on ${socketPath}: ${detail}`);
  }
}

/**
 * Thawing failed after every retry and the agent did not confirm "thawed": the guest's
 * filesystems may still be frozen, which blocks all its writes. This needs an operator.
 */
export class GuestAgentThawError extends QreplicaError {
  readonly code = "GUEST_AGENT_THAW_FAILED" as const;
  constructor(
    readonly socketPath: string,
    readonly attempts: number,
    /** The last answer of guest-fsfreeze-status, or undefined when that failed as well. */
    readonly lastStatus: "thawed" | "frozen" | undefined,
    options: { cause?: unknown; operationError?: unknown },
  ) {
    super(
      `could not thaw the guest's filesystems through ${socketPath} after ${attempts} attempts ` +
        `(guest-fsfreeze-status: ${lastStatus ?? "unknown"}); guest writes may be blocked. Thaw by hand with ` +
        `'virsh qemu-agent-command <vm> {"execute":"guest-fsfreeze-thaw"}' or 'fsfreeze -u <mountpoint>' in the guest`,
      { cause: options.cause },
    );
    this.operationError = options.operationError;
  }

  /** The error of the wrapped operation, when it failed too; the thaw failure takes precedence. */
  readonly operationError: unknown;
}
