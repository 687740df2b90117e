import type { SchemaProblem } from "../common/configSchema.js";
import { QreplicaError } from "../common/errors.js";

/** A site directory or one of its files is missing or malformed. */
export class SiteConfigError extends QreplicaError {
  readonly code = "SITE_CONFIG_INVALID" as const;
  constructor(
    readonly path: string,
    detail: string,
    options?: { cause?: unknown; problems?: readonly SchemaProblem[] },
  ) {
    super(`${path}: ${detail}`, options);
    this.problems = options?.problems ?? [];
  }
  /** Every bad field of site.json, each with its path (`health.windowSeconds`) and the fix. */
  readonly problems: readonly SchemaProblem[];
}

/** Another site process serves this directory; a second one would fight it for its storage and ledger. */
export class SiteDirectoryInUseError extends QreplicaError {
  readonly code = "SITE_DIRECTORY_IN_USE" as const;
  constructor(
    readonly dir: string,
    readonly holderPid: number | undefined,
  ) {
    super(
      `site directory ${dir} is already served by ${holderPid ? `process ${holderPid}` : "another process"} ('qreplica site serve'); ` +
        `nothing was started or changed. Stop that process first${holderPid ? ` (kill ${holderPid})` : ""}, or serve another directory`,
    );
  }
}
