import { QreplicaError } from "../../common/errors.js";

/** The VM spec is shared with the agent (src/model/), and so is its error. */
export { VmSpecError } from "../../model/errors.js";

/** A VM could not be started (bad inputs for this launch, QEMU refused, or it never ran). */
export class VmLaunchError extends QreplicaError {
  readonly code = "VM_LAUNCH_FAILED" as const;
  constructor(
    readonly vmName: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`cannot launch VM '${vmName}': ${detail}`, options);
  }
}

/** A throwaway overlay for a test failover could not be created. */
export class OverlayError extends QreplicaError {
  readonly code = "OVERLAY_CREATE_FAILED" as const;
  constructor(
    readonly path: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`cannot create overlay ${path}: ${detail}`, options);
  }
}
