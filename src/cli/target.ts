import type { Command } from "commander";
import type { SiteTargetOptions } from "./siteClient.js";

/** A command's site options plus --json, as every control-plane command takes them. */
export type Target = SiteTargetOptions & { json: boolean };

/** Help texts a command may sharpen (e.g. which role its certificate needs). */
export interface TargetHelp {
  dir?: string;
  site?: string;
  cert?: string;
}

/** Which site, and as whom: `--dir` on the site's host, or `--site` with a personal certificate. */
export function withSiteOptions(cmd: Command, help: TargetHelp = {}): Command {
  return cmd
    .option("--dir <dir>", help.dir ?? "the site's directory on this host (its address and admin certificate)")
    .option("--site <host:port>", help.site ?? "the site's address")
    .option("--ca <file>", "CA certificate (with --site)")
    .option("--cert <file>", help.cert ?? "client certificate (with --site)")
    .option("--key <file>", "client key (with --site)")
    .option("--crl <file>", "the CA's revocation list (crl.pem): a site it lists is refused (with --dir: the site's crlFile)");
}

export function withTarget(cmd: Command, help: TargetHelp = {}): Command {
  return withSiteOptions(cmd, help).option("--json", "JSON output", false);
}
