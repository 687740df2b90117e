/**
 * What a command's exit status says, so scripts can tell "not there" from "not allowed" from "the
 * site is down" without parsing messages. The same table is in the README.
 */
export const EXIT = {
  ok: 0,
  /** The command ran and failed (anything not below). */
  failed: 1,
  /** Usage, an argument, a config or runbook file is invalid: fix the input. */
  invalid: 2,
  /** The VM, point, policy or test failover named does not exist there. */
  notFound: 3,
  /** A runbook stopped at a failed step. */
  runbookStopped: 4,
  /** The site refused: this identity's role may not do it, or the VM's state does not allow it now. */
  refused: 5,
  /** No site answered at the address (not running, wrong address, or no answer in time). */
  unreachable: 6,
  /** `ledger verify` found a broken hash chain. */
  verifyFailed: 7,
} as const;

const BY_CODE: Record<string, number> = {
  INVALID_ARGUMENT: EXIT.invalid,
  OUT_OF_RANGE: EXIT.invalid,
  // A wildcard in authorizations.json: the file must be fixed before the site starts.
  AUTHORIZATION_WILDCARD: EXIT.invalid,
  NOT_FOUND: EXIT.notFound,
  PERMISSION_DENIED: EXIT.refused,
  UNAUTHENTICATED: EXIT.refused,
  FAILED_PRECONDITION: EXIT.refused,
  ALREADY_EXISTS: EXIT.refused,
  ABORTED: EXIT.refused,
  UNAVAILABLE: EXIT.unreachable,
  DEADLINE_EXCEEDED: EXIT.unreachable,
};

/** The exit status for an error: by its gRPC status name or our error codes' conventions. */
export function exitCodeFor(err: unknown): number {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return EXIT.failed;
  const known = BY_CODE[code];
  if (known !== undefined) return known;
  if (code.endsWith("_NOT_FOUND")) return EXIT.notFound;
  if (code.endsWith("_INVALID") || code.endsWith("_UNREADABLE") || code.startsWith("INVALID_")) return EXIT.invalid;
  return EXIT.failed;
}

/** A command-line value that is not one the option takes (exit status `invalid`). */
export class InvalidCliArgumentError extends Error {
  readonly code = "INVALID_ARGUMENT" as const;
}
