import { QreplicaError } from "../common/errors.js";

/** A site directory or one of its files is missing or malformed. */
export class SiteConfigError extends QreplicaError {
  readonly code = "SITE_CONFIG_INVALID" as const;
  constructor(
    readonly path: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${path}: ${detail}`, options);
  }
}
