/**
 * Refusals of the relationship aggregate. Each names the VM and says what the operator (or the
 * calling component) can do next, because these messages end up in the CLI verbatim.
 */
import { QreplicaError } from "../../common/errors.js";
import type { ReplicationStateName } from "./states.js";

/** What the operator can do from each state, used when a command is not allowed there. */
export const NEXT_STEP: Readonly<Record<ReplicationStateName, string>> = {
  "not-enabled": "Enable replication first.",
  "ready-for-initial-replication": "Start the initial replication first.",
  "initial-replication-in-progress": "Wait for the initial replication to complete (or fail the initial cycle and start it again).",
  replicating: "Replication is running; no recovery action is needed.",
  paused: "Resume replication first.",
  "resync-required": "Run a resynchronisation first.",
  resynchronising: "Wait for the resynchronisation to finish.",
  "prepared-for-planned-failover": "A planned failover is prepared: fail over once the primary's final cycle is committed, or cancel the planned failover.",
  "failed-over-waiting-completion": "The VM is failed over: check it, then complete the failover, or cancel the failover to return to replication.",
  "failed-over": "The failover is complete: start reverse replication to protect the VM again.",
};

export class InvalidTransitionError extends QreplicaError {
  readonly code = "INVALID_TRANSITION" as const;

  constructor(
    readonly vmId: string,
    readonly state: ReplicationStateName,
    readonly command: string,
    readonly allowedStates: readonly ReplicationStateName[],
    hint?: string,
  ) {
    super(`VM ${vmId} is in state ${state}; ${command} needs ${allowedStates.join(" or ")}. ${hint ?? NEXT_STEP[state]}`);
  }
}

/**
 * A message carries a generation other than the relationship's. Refusing it, rather than probing
 * the other site, is what keeps two sites from accepting writes in the same generation.
 */
export class StaleGenerationError extends QreplicaError {
  readonly code = "STALE_GENERATION" as const;

  constructor(
    readonly vmId: string,
    readonly presentedGeneration: number,
    readonly currentGeneration: number,
  ) {
    super(
      presentedGeneration < currentGeneration
        ? `VM ${vmId}: refused a message of generation ${presentedGeneration}; the relationship is at generation ` +
            `${currentGeneration}. The sender is an old primary (a failover happened since): it must not resume the VM ` +
            `or send more changes. Shut it down and protect the VM again by reverse replication from the current primary.`
        : `VM ${vmId}: refused a message of generation ${presentedGeneration}; this site's ledger is only at generation ` +
            `${currentGeneration}. This ledger is behind (restored from an old backup?) or the sender is misconfigured; ` +
            `do not resume the VM here until the two sites agree on the generation.`,
    );
  }
}

/**
 * A Hello declared a failover of the primary upstream (A -> B -> C) that this replica does not
 * accept: the message says which rule it broke and what to do. Nothing was recorded.
 */
export class UpstreamFailoverRefusedError extends QreplicaError {
  readonly code = "UPSTREAM_FAILOVER_REFUSED" as const;

  constructor(
    readonly vmId: string,
    message: string,
  ) {
    super(`VM ${vmId}: ${message}`);
  }
}

export class OutOfOrderCycleError extends QreplicaError {
  readonly code = "OUT_OF_ORDER_CYCLE" as const;

  constructor(
    readonly vmId: string,
    readonly cycleSeq: number,
    readonly lastCycleSeq: number,
    readonly expectedCycleSeq?: number,
  ) {
    super(
      expectedCycleSeq !== undefined
        ? `VM ${vmId}: cycle ${cycleSeq} does not match cycle ${expectedCycleSeq}, the one that was started. ` +
            `Discard it; the agent must fail the cycle so its changed blocks go into the next one.`
        : `VM ${vmId}: cycle ${cycleSeq} arrives after cycle ${lastCycleSeq} was recorded; cycles are recorded in ` +
            `increasing order. It is a duplicate or a delayed delivery: discard it; the agent must fail the cycle so ` +
            `its changed blocks go into the next one.`,
    );
  }
}

/** Retention must not rewrite images a running test VM reads (DESIGN: merges below K wait). */
export class MergeBlockedByTestFailoverError extends QreplicaError {
  readonly code = "MERGE_BLOCKED_BY_TEST_FAILOVER" as const;

  constructor(
    readonly vmId: string,
    readonly pointId: string,
    readonly intoPointId: string,
    readonly testIds: readonly string[],
  ) {
    super(
      `VM ${vmId}: merging recovery point ${pointId} into ${intoPointId} would rewrite images under running test ` +
        `failover(s) ${testIds.join(", ")}. The merge waits: it runs once the test failover is stopped.`,
    );
  }
}

export class MergeInProgressError extends QreplicaError {
  readonly code = "MERGE_IN_PROGRESS" as const;

  constructor(
    readonly vmId: string,
    readonly pointId: string,
    readonly intoPointId: string,
    /** What waits for the merge, e.g. "starting a test failover"; by default another merge. */
    blocked = "starting another",
  ) {
    super(`VM ${vmId}: the merge of recovery point ${pointId} into ${intoPointId} is still in progress. ` + `Finish it (completeMerge) before ${blocked}.`);
  }
}

/** A recovery point that a test or a failover cannot be built on. */
export class RecoveryPointUnavailableError extends QreplicaError {
  readonly code = "RECOVERY_POINT_UNAVAILABLE" as const;

  constructor(
    readonly vmId: string,
    readonly pointId: string | undefined,
    readonly why: "unknown" | "merging" | "none",
    /** Points that can be opened, oldest first. */
    readonly availablePointIds: readonly string[],
  ) {
    const what =
      why === "none"
        ? `VM ${vmId} has no recovery point yet.`
        : why === "merging"
          ? `VM ${vmId}: recovery point ${pointId} is being merged away by retention and can no longer be opened.`
          : `VM ${vmId} has no recovery point ${pointId} (never created, or merged away by retention).`;
    super(`${what} Available points: ${availablePointIds.length > 0 ? `${availablePointIds.join(", ")} (the last is the latest)` : "none"}.`);
  }
}

export class TestFailoverExistsError extends QreplicaError {
  readonly code = "TEST_FAILOVER_EXISTS" as const;

  constructor(
    readonly vmId: string,
    readonly testId: string,
    readonly pointId: string,
  ) {
    super(`VM ${vmId}: test failover ${testId} is already running (on ${pointId}). Choose another test id, or stop ${testId} first.`);
  }
}

export class NoSuchTestFailoverError extends QreplicaError {
  readonly code = "NO_SUCH_TEST_FAILOVER" as const;

  constructor(
    readonly vmId: string,
    readonly testId: string,
    /** "testId (pointId)" of each running test. */
    readonly running: readonly string[],
  ) {
    super(`VM ${vmId}: no test failover ${testId} is running. ` + (running.length > 0 ? `Running test failovers: ${running.join(", ")}.` : `No test failover is running.`));
  }
}

/** Something a running test VM reads through its backing chain would be deleted or rewritten. */
export class TestFailoversRunningError extends QreplicaError {
  readonly code = "TEST_FAILOVERS_RUNNING" as const;

  constructor(
    readonly vmId: string,
    readonly command: string,
    readonly testIds: readonly string[],
  ) {
    super(`VM ${vmId}: ${command} would delete images under running test failover(s) ${testIds.join(", ")}. ` + `Stop the test failover(s) first.`);
  }
}

/** A planned failover whose zero-data-loss promise cannot be kept yet. */
export class PlannedFailoverNotReadyError extends QreplicaError {
  readonly code = "PLANNED_FAILOVER_NOT_READY" as const;

  constructor(
    readonly vmId: string,
    readonly latestPointId: string | undefined,
    readonly latestCutoffAt: string | undefined,
    readonly primaryStoppedAt: string,
  ) {
    super(
      `VM ${vmId}: the primary VM stopped at ${primaryStoppedAt} but the latest recovery point ` +
        `${latestPointId === undefined ? "(none)" : `${latestPointId} was cut at ${latestCutoffAt}`}, so the primary's final cycle ` +
        `has not been committed yet and a planned failover would lose data. Wait for the final cycle; or cancel the ` +
        `planned failover; or fail over unplanned, accepting the loss of the changes after the chosen point.`,
    );
  }
}

/** A failover stated the generation it expected to create, and the relationship has moved on. */
export class UnexpectedGenerationError extends QreplicaError {
  readonly code = "UNEXPECTED_GENERATION" as const;

  constructor(
    readonly vmId: string,
    readonly expectedNewGeneration: number,
    readonly statedNewGeneration: number,
  ) {
    super(
      `VM ${vmId}: a failover now creates generation ${expectedNewGeneration}, not ${statedNewGeneration} ` +
        `(generations go up by exactly 1 per failover). Someone else failed over or cancelled since this was decided: ` +
        `check the VM's status and decide again.`,
    );
  }
}

export class NoSuchMergeError extends QreplicaError {
  readonly code = "NO_SUCH_MERGE" as const;

  constructor(
    readonly vmId: string,
    readonly pointId: string,
  ) {
    super(`VM ${vmId}: no merge of recovery point ${pointId} is in progress, so there is nothing to complete.`);
  }
}

/** A second go-ahead for a resync that already has one: someone else approved it first. */
export class ResyncAlreadyApprovedError extends QreplicaError {
  readonly code = "RESYNC_ALREADY_APPROVED" as const;

  constructor(
    readonly vmId: string,
    readonly approvedBy: string,
  ) {
    super(
      `VM ${vmId}: its resync was already approved by ${approvedBy}; nothing more is needed. The primary's agent ` +
        `runs it at once if connected, else at its next connection ('qreplica events ${vmId}' shows the approval).`,
    );
  }
}

/** A command's input is malformed: a bug in the caller, never retried. */
export class InvalidCommandInputError extends QreplicaError {
  readonly code = "INVALID_COMMAND_INPUT" as const;
}

export class UnknownRelationshipEventError extends QreplicaError {
  readonly code = "UNKNOWN_EVENT_TYPE" as const;

  constructor(
    readonly eventType: string,
    readonly stream: string,
  ) {
    super(`Event type "${eventType}" in "${stream}" is unknown to this version of qreplica. ` + `It was probably written by a newer version: upgrade before operating on this VM.`);
  }
}

/** A policy's lock keeps the point: no command, whatever the caller's role, merges or drops it before the lock ends. */
export class RecoveryPointLockedError extends QreplicaError {
  readonly code = "RECOVERY_POINT_LOCKED" as const;

  constructor(
    readonly vmId: string,
    readonly action: string,
    readonly locked: readonly { pointId: string; lockedUntil: string }[],
  ) {
    const list = locked.map((p) => `${p.pointId} until ${p.lockedUntil}`).join(", ");
    super(
      `VM ${vmId}: ${action} would remove locked recovery point(s) ${list}. The replication policy's lock period ` +
        `keeps a point from being merged, dropped or completed away by any role; retry after the lock ends.`,
    );
  }
}

/** `last-clean` was asked for and every point is suspect (or newer than a suspect one). */
export class NoCleanPointError extends QreplicaError {
  readonly code = "NO_CLEAN_POINT" as const;

  constructor(
    readonly vmId: string,
    readonly firstSuspectPointId: string,
  ) {
    super(
      `VM ${vmId} has no recovery point before the first suspect point ${firstSuspectPointId}: every retained point may hold encrypted data. ` +
        `Name a point with --point after checking it, or clear the suspicion ('qreplica points clear-suspect') if it was a false alarm.`,
    );
  }
}

/** Nothing to clear: no point of the VM is suspect (or not the one named). */
export class NoSuspectPointError extends QreplicaError {
  readonly code = "NO_SUSPECT_POINT" as const;

  constructor(
    readonly vmId: string,
    readonly pointId: string | undefined,
    readonly suspectPointIds: readonly string[],
  ) {
    super(
      pointId === undefined
        ? `VM ${vmId} has no suspect recovery point to clear.`
        : `VM ${vmId}: recovery point ${pointId} is not suspect. Suspect points: ${suspectPointIds.length > 0 ? suspectPointIds.join(", ") : "none"}.`,
    );
  }
}
