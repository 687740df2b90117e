import { QreplicaError } from "../../common/errors.js";

/** A QEMU tool (qemu-img, qemu-storage-daemon, qemu-system-*) failed or is not installed. */
export class QemuToolError extends QreplicaError {
  readonly code = "QEMU_TOOL_FAILED" as const;
  constructor(
    readonly tool: string,
    readonly args: readonly string[],
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${tool} ${args.join(" ")}: ${detail}`, options);
  }
}
