import { QreplicaError } from "../../src/common/errors.js";

/**
 * The changed-block record of a disk can no longer be trusted (bitmap missing or inconsistent,
 * typically after QEMU or the host crashed). Only a resynchronisation makes the replica whole again.
 */
export class ResyncRequiredError extends QreplicaError {
  readonly code = "RESYNC_REQUIRED" as const;
  constructor(
    readonly vmId: string,
    readonly diskId: string,
    readonly reason: string,
  ) {
    super(`VM ${vmId} disk ${diskId}: resync required: ${reason}. Start a resynchronisation; incremental cycles are refused until then`);
  }
}

/** A cycle was asked for before replication of the VM was enabled. */
export class CaptureNotEnabledError extends QreplicaError {
  readonly code = "CAPTURE_NOT_ENABLED" as const;
  constructor(readonly vmId: string) {
    super(`VM ${vmId}: changed-block tracking is not enabled; run the initial replication first`);
  }
}

/** The configured block node is not in QEMU. */
export class DiskNodeNotFoundError extends QreplicaError {
  readonly code = "DISK_NODE_NOT_FOUND" as const;
  constructor(
    readonly vmId: string,
    readonly diskId: string,
    readonly node: string,
    readonly available: string[],
  ) {
    super(
      `VM ${vmId} disk ${diskId}: QEMU has no block node '${node}' (nodes: ${available.join(", ") || "none"}). ` +
        `Set the disk's node to the -blockdev node-name of its qcow2 format node`,
    );
  }
}

/** The disk changed size between the pre-cut-off query and the cut-off: the cycle is retried. */
export class DiskResizedDuringCutoffError extends QreplicaError {
  readonly code = "DISK_RESIZED_DURING_CUTOFF" as const;
  constructor(
    readonly diskId: string,
    readonly before: number,
    readonly after: number,
  ) {
    super(`disk ${diskId} was resized from ${before} to ${after} bytes during the cut-off; the cycle was rolled back, retry it`);
  }
}

/** A cycle object was used after it was confirmed or aborted. */
export class CycleFinishedError extends QreplicaError {
  readonly code = "CYCLE_FINISHED" as const;
  constructor(
    readonly seq: number,
    readonly state: string,
  ) {
    super(`capture cycle ${seq} is already ${state}`);
  }
}

/** Another cycle of the same VM is still open; cycles of a VM are strictly sequential. */
export class CycleInProgressError extends QreplicaError {
  readonly code = "CYCLE_IN_PROGRESS" as const;
  constructor(
    readonly vmId: string,
    readonly seq: number,
  ) {
    super(`VM ${vmId}: cycle ${seq} is still open; confirm or abort it first`);
  }
}

/**
 * The scratch filesystem has too little free space to hold a cut-off's copy-before-write data:
 * nothing was cut, every change stays recorded for the next cycle.
 */
export class ScratchSpaceLowError extends QreplicaError {
  readonly code = "SCRATCH_SPACE_LOW" as const;
  constructor(
    readonly vmId: string,
    readonly scratchDir: string,
    readonly freeBytes: number,
    readonly neededBytes: number,
  ) {
    super(
      `VM ${vmId}: the scratch directory ${scratchDir} has ${mib(freeBytes)} free, less than the ${mib(neededBytes)} a cut-off needs; ` +
        `no cut-off was taken and all changes are kept for the next cycle. Free space there, or point the VM's scratchDir ` +
        `(agent config) at a filesystem with room for what the guest may overwrite during one cycle`,
    );
  }
}

/**
 * The point-in-time snapshot of an open cycle broke: copying old data into the scratch failed (it
 * filled up, or an I/O error) or took longer than cbw-timeout. The guest's writes went through
 * (on-cbw-error: break-snapshot); the cycle cannot be completed and is aborted, its changes kept.
 */
export class SnapshotBrokenError extends QreplicaError {
  readonly code = "SNAPSHOT_BROKEN" as const;
  constructor(
    readonly vmId: string,
    readonly diskId: string,
    readonly seq: number,
    readonly scratchDir: string,
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(
      `VM ${vmId} disk ${diskId}: the point-in-time snapshot of cycle ${seq} broke: ${reason}. The guest's writes were not affected; ` +
        `the cycle is aborted and its changes are kept for the next one. If this repeats, give the scratch directory ${scratchDir} ` +
        `more room (agent config scratchDir) or shorten the cycle interval`,
      options,
    );
  }
}

/**
 * The disk's guest device runs its I/O in an iothread. On QEMU 7.2 an NBD export of such a disk
 * aborts the whole VM when a reader disconnects (`nbd_blockdev_client_closed: Assertion
 * 'qemu_in_main_thread() && nbd_server' failed`), which a killed agent cannot avoid; a
 * copy-before-write filter over a throttle filter there aborts it too. So no cut-off is taken.
 */
export class IothreadDiskError extends QreplicaError {
  readonly code = "IOTHREAD_UNSUPPORTED" as const;
  constructor(
    readonly vmId: string,
    readonly diskId: string,
    readonly device: string,
    readonly iothread: string | undefined,
  ) {
    super(
      `VM ${vmId} disk ${diskId}: ${iothread ? `device ${device} runs its I/O in iothread ${iothread}` : `the VM has iothreads and the agent cannot tell whether device ${device} uses one`}; ` +
        `QEMU 7.2 aborts the whole VM when a reader of an NBD export of such a disk disconnects, so no cut-off is taken (no change is dropped: what is recorded stays for a later cycle). ` +
        `To replicate this disk, run its device without iothread= (or on a controller without one)`,
    );
  }
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}
