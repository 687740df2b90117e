import { QreplicaError } from "../common/errors.js";

/** Writing a recovery point failed; the partial overlay is discarded, nothing committed. */
export class StorageWriteError extends QreplicaError {
  readonly code = "STORAGE_WRITE_FAILED" as const;
  constructor(
    readonly vmId: string,
    readonly diskId: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`replica storage for VM ${vmId} disk ${diskId}: ${detail}`, options);
  }
}

/** An extent that does not fit the disk as announced at the cut-off. */
export class ExtentOutOfRangeError extends QreplicaError {
  readonly code = "EXTENT_OUT_OF_RANGE" as const;
  constructor(
    readonly diskId: string,
    readonly offset: number,
    readonly length: number,
    readonly sizeBytes: number,
  ) {
    super(`extent ${offset}+${length} of disk ${diskId} ends beyond the disk size ${sizeBytes} announced at the cut-off`);
  }
}

/** The chain on disk does not match what the ledger says was committed. */
export class ChainMismatchError extends QreplicaError {
  readonly code = "CHAIN_MISMATCH" as const;
  constructor(
    readonly path: string,
    detail: string,
  ) {
    super(`replica chain ${path}: ${detail}`);
  }
}

/**
 * A seed image for reverse replication that cannot serve as the base's backing file: missing,
 * not qcow2, or still open for writing by another process (typically the old primary's QEMU,
 * paused after fencing). The chain on this site would read it for as long as it exists.
 */
export class SeedUnusableError extends QreplicaError {
  readonly code = "SEED_UNUSABLE" as const;
  constructor(
    readonly diskId: string,
    readonly imagePath: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`seed image ${imagePath} for disk ${diskId} ${detail}`, options);
  }
}

/**
 * The site's qemu-storage-daemon ended while the site was running (killed, crashed, OOM): every
 * replica chain is written through it, so the site cannot write a point until it is started again.
 */
export class StorageDaemonExitedError extends QreplicaError {
  readonly code = "STORAGE_DAEMON_EXITED" as const;
  constructor(
    readonly pid: number,
    readonly exit: { code: number | null; signal: string | null },
    readonly siteDir: string,
  ) {
    super(
      `the site's qemu-storage-daemon (pid ${pid}) exited (${exit.signal ?? `code ${exit.code}`}) while the site was running; ` +
        `no recovery point can be written without it, so the site stops: its service manager starts it again, ` +
        `or run \`qreplica site serve --dir ${siteDir}\`. Cycles in flight are discarded and the agents send them again; committed points are untouched.`,
    );
  }
}
