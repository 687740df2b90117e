import { QreplicaError } from "../common/errors.js";

/** A VM spec is malformed; `problems` lists every bad field, each with how to fix it. */
export class VmSpecError extends QreplicaError {
  readonly code = "VM_SPEC_INVALID" as const;
  constructor(readonly problems: readonly string[]) {
    super(`invalid VM spec: ${problems.join("; ")}`);
  }
}
