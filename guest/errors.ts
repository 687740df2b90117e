import { QreplicaError } from "../src/common/errors.js";

/** nasm is missing, failed, or produced something that is not a 512-byte boot sector. */
export class GuestBuildError extends QreplicaError {
  readonly code = "GUEST_BUILD_FAILED" as const;
}

/** A counter disk cannot be created, or its counter sector cannot be read or decoded. */
export class GuestDiskError extends QreplicaError {
  readonly code = "GUEST_DISK_INVALID" as const;
  constructor(
    readonly path: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${path}: ${detail}`, options);
  }
}

/** The guest did not print what was awaited in time, printed an error, or its QEMU exited. */
export class GuestSerialError extends QreplicaError {
  readonly code = "GUEST_SERIAL_TIMEOUT" as const;
  constructor(
    readonly serialLogPath: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${serialLogPath}: ${detail}`, options);
  }
}
