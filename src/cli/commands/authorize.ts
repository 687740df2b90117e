import { resolve } from "node:path";
import type { Command } from "commander";
import { addAuthorization, loadAuthorizations, loadSiteConfig } from "../../site/siteConfig.js";
import { formatTable } from "../table.js";
import { emit, fail } from "../output.js";

export function registerAuthorize(program: Command): void {
  program
    .command("authorize")
    .description("allow a primary (by certificate identity) to replicate to this site")
    .requiredOption("--dir <dir>", "site directory")
    .requiredOption("--primary <identity>", "the primary agent's certificate CN ('*' for any certificate of the CA)")
    .option("--trust-group <name>", "trust group", "default")
    .option("--storage-root <dir>", "storage root for this primary's VMs")
    .option("--json", "JSON output", false)
    .action((o: { dir: string; primary: string; trustGroup: string; storageRoot?: string; json: boolean }) => {
      try {
        const dir = resolve(o.dir);
        loadSiteConfig(dir);
        const entries = addAuthorization(dir, { primaryIdentity: o.primary, trustGroup: o.trustGroup, ...(o.storageRoot ? { storageRoot: resolve(o.storageRoot) } : {}) });
        emit(o.json, entries, () => formatTable(["primary", "trust group", "storage root"], entries.map((e) => [e.primaryIdentity, e.trustGroup, e.storageRoot ?? "(site default)"])));
      } catch (err) {
        fail(err, o.json);
      }
    });
  program
    .command("authorizations")
    .description("list the primaries allowed to replicate to this site")
    .requiredOption("--dir <dir>", "site directory")
    .option("--json", "JSON output", false)
    .action((o: { dir: string; json: boolean }) => {
      try {
        const entries = loadAuthorizations(resolve(o.dir));
        emit(o.json, entries, () => formatTable(["primary", "trust group", "storage root"], entries.map((e) => [e.primaryIdentity, e.trustGroup, e.storageRoot ?? "(site default)"])));
      } catch (err) {
        fail(err, o.json);
      }
    });
}
