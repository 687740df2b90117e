import { QreplicaError } from "../../common/errors.js";

/** `qreplica verify` for a VM whose policy schedules no drill: the checks come from the policy. */
export class VerificationNotConfiguredError extends QreplicaError {
  readonly code = "VERIFICATION_NOT_CONFIGURED" as const;
  constructor(
    readonly vmId: string,
    readonly policyName: string,
  ) {
    super(
      `VM ${vmId} replicates under policy '${policyName}', which has no 'verification' (what a drill checks): ` +
        `add e.g. 'verification: { every: 6h, checks: { serialPattern: "login:" } }' to a policy and bind the VM to it ('qreplica policy apply', 'qreplica policy bind')`,
    );
  }
}

/** One drill per VM at a time: a second would hold a second test VM for nothing. */
export class DrillRunningError extends QreplicaError {
  readonly code = "DRILL_RUNNING" as const;
  constructor(
    readonly vmId: string,
    readonly drillId: string,
    readonly pointId: string,
  ) {
    super(`VM ${vmId} has a verification drill running (${drillId} on ${pointId}); wait for its result ('qreplica points ${vmId}') and try again`);
  }
}

/** The site is stopping: it starts no drill it would have to cancel at once. */
export class DrillsStoppedError extends QreplicaError {
  readonly code = "DRILLS_STOPPED" as const;
  constructor(readonly vmId: string) {
    super(`VM ${vmId}: the site is stopping and starts no verification drill; run 'qreplica verify ${vmId}' again once it serves`);
  }
}
