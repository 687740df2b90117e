import { optionalId, type IdKind } from "../../model/index.js";

/** Request fields of the control plane that carry an id, and which kind. */
const ID_FIELDS: ReadonlyArray<[field: string, kind: IdKind]> = [
  ["vmId", "VM id"],
  ["recoveryPointId", "recovery point id"],
  ["testId", "test id"],
  ["runId", "runbook run id"],
];

/**
 * Refuses a control request carrying a malformed id before any handler sees it (the handlers
 * turn ids into ledger streams, directories and QEMU names). Empty means "not set" in proto3 and
 * passes; whether a field is required is the handler's to say. Disk ids inside `disks` and
 * `seeds` are checked too. Throws InvalidIdError (code INVALID_ID: INVALID_ARGUMENT on the wire).
 */
export function checkRequestIds(request: unknown): void {
  if (typeof request !== "object" || request === null) return;
  const r = request as Record<string, unknown>;
  for (const [field, kind] of ID_FIELDS) {
    const v = r[field];
    if (typeof v === "string") optionalId(kind, v, field);
  }
  for (const list of ["disks", "seeds"]) {
    const items = r[list];
    if (!Array.isArray(items)) continue;
    items.forEach((d: unknown, i) => {
      const diskId = (d as { diskId?: unknown } | null)?.diskId;
      if (typeof diskId === "string") optionalId("disk id", diskId, `${list}[${i}].diskId`);
    });
  }
}
