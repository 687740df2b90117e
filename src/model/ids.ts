import { QreplicaError } from "../common/errors.js";

/**
 * The one shape every id takes that either role turns into a file name, a QMP node or bitmap name,
 * a ledger stream or a directory: VM ids, disk ids, recovery point ids, test ids, runbook run ids.
 * A letter or digit first (so never `.`, `..`, `-flag` or an absolute path), then letters, digits,
 * `.`, `_` and `-`, at most 64 characters: no `/`, no NUL, nothing a shell, QEMU's option parser
 * (`,`) or a path join could read as structure.
 */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const ID_MAX_LENGTH = 64;

export type IdKind = "VM id" | "disk id" | "recovery point id" | "test id" | "runbook run id" | "group id";

export class InvalidIdError extends QreplicaError {
  readonly code = "INVALID_ID" as const;
  constructor(
    readonly kind: IdKind,
    readonly value: string,
    where: string | undefined,
  ) {
    super(
      `${where ? `${where}: ` : ""}${kind} ${printable(value)} is not a valid id: ` +
        `use 1-${ID_MAX_LENGTH} letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. web1, vda, rp-12)`,
    );
  }
}

export function isValidId(value: unknown): value is string {
  return typeof value === "string" && ID_PATTERN.test(value);
}

/** Returns `value` when it is a valid id, else throws InvalidIdError naming `kind` and `where`. */
export function requireId(kind: IdKind, value: unknown, where?: string): string {
  if (isValidId(value)) return value;
  throw new InvalidIdError(kind, typeof value === "string" ? value : String(value), where);
}

/** Like requireId, but the empty string (proto3's "not set") passes as undefined. */
export function optionalId(kind: IdKind, value: string | undefined, where?: string): string | undefined {
  return value === undefined || value === "" ? undefined : requireId(kind, value, where);
}

/** JSON-quoted and cut, so a hostile id cannot flood a log line or hide control characters. */
function printable(value: string): string {
  const q = JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value);
  return value.length > 80 ? `${q} (${value.length} characters)` : q;
}
