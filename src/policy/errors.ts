import { QreplicaError } from "../common/errors.js";

/** One problem in a policy spec: the field's path (e.g. `retention.tiers[1].every`) and what to write instead. */
export interface PolicyProblem {
  path: string;
  message: string;
}

/** A policy spec that does not validate: every problem at once, each naming its field and the fix. */
export class InvalidPolicyError extends QreplicaError {
  readonly code = "INVALID_POLICY" as const;
  constructor(
    readonly problems: PolicyProblem[],
    readonly source?: string,
  ) {
    super(
      `${source ? `${source}: ` : ""}the policy is not valid (${problems.length} problem${problems.length === 1 ? "" : "s"}):\n` +
        problems.map((p) => `  ${p.path ? `${p.path}: ` : ""}${p.message}`).join("\n"),
    );
  }
}

/** A policy name no version of which is stored on this site. */
export class UnknownPolicyError extends QreplicaError {
  readonly code = "UNKNOWN_POLICY" as const;
  constructor(
    readonly policyName: string,
    known: string[],
  ) {
    super(
      `no policy '${policyName}' on this site (${known.length ? `policies: ${known.join(", ")}` : "no policy applied yet"}); ` +
        `apply one with 'qreplica policy apply FILE' (its 'name:' is the policy's name), or use 'default'`,
    );
  }
}

/** A version of a policy that was never applied. */
export class UnknownPolicyVersionError extends QreplicaError {
  readonly code = "UNKNOWN_POLICY_VERSION" as const;
  constructor(name: string, version: number, latest: number) {
    super(`policy '${name}' has no version ${version}: its versions are 1 to ${latest} ('qreplica policy show ${name}' shows the latest)`);
  }
}
