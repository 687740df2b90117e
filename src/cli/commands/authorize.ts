import { existsSync } from "node:fs";
import { resolve } from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { Command } from "commander";
import type { AuthorizationsResponse } from "../../gen/qreplica/v1/control.js";
import { getSqliteEventStore } from "../../ledger/index.js";
import { openConfiguredLedger } from "../../ledger/ledgerConfig.js";
import { localAdminCaller, SiteAuthorizations, type AuthorizationEntry } from "../../site/authorizations.js";
import { addressFile, loadSiteConfig, runDir } from "../../site/siteConfig.js";
import { SiteDirectoryInUseError } from "../../site/errors.js";
import { lockSiteDirectory, type SiteLock } from "../../site/siteLock.js";
import { ControlCallError, controlClient, unary } from "../siteClient.js";
import { formatTable } from "../table.js";
import { emit, fail } from "../output.js";
import { withTarget, type Target } from "../target.js";

const fromWire = (r: AuthorizationsResponse): AuthorizationEntry[] =>
  r.entries.map((e) => ({ primaryIdentity: e.primaryIdentity, addedBy: e.addedBy, addedByRole: "", addedAt: e.addedAt?.toISOString() ?? "" }));

const show = (entries: AuthorizationEntry[]) =>
  entries.length === 0
    ? "no primary is authorized on this site"
    : formatTable(
        ["primary", "added by", "added at"],
        entries.map((e) => [e.primaryIdentity, e.addedBy, e.addedAt]),
      );

/**
 * A change asked of a site directory whose site runs (it holds the directory's lock) but did not
 * answer on its address: the CLI must not write behind its back.
 */
export class SiteUnreachableError extends Error {
  readonly code = "SITE_RUNNING_UNREACHABLE" as const;
  constructor(dir: string, holder: SiteDirectoryInUseError, unavailable: Error) {
    super(
      `the site of ${dir} runs (${holder.holderPid ? `process ${holder.holderPid}` : "another process"} holds the directory) but did not answer on its address ` +
        `(${unavailable.message}); nothing was changed. Check that it listens where ${addressFile(dir)} says and that this CLI trusts its certificate, ` +
        `or stop it and run this again (the entry is then written to its ledger directly)`,
      { cause: unavailable },
    );
  }
}

/**
 * Authorization entries change through the site's control plane (role admin) while the site runs.
 * With `--dir` and the site not running (no address file, or nobody answering on it, and its
 * directory lock free), the CLI writes the ledger itself, holding the site's lock, recorded as the
 * local admin `local-admin:USER@HOST`: whoever may write the site's files could anyway. The site
 * reads the entries from the ledger at every Hello.
 */
async function viaSite(
  o: Target,
  call: (client: ReturnType<typeof controlClient>) => Promise<AuthorizationsResponse>,
  offline: (authz: SiteAuthorizations) => Promise<AuthorizationEntry[]>,
  ledgerMustExist = false,
): Promise<AuthorizationEntry[]> {
  const dir = o.dir ? resolve(o.dir) : undefined;
  let unavailable: ControlCallError | undefined;
  if (!dir || o.site || existsSync(addressFile(dir))) {
    try {
      const client = controlClient({ ...o, ...(dir ? { dir } : {}) });
      try {
        return fromWire(await call(client));
      } finally {
        client.close();
      }
    } catch (err) {
      if (!dir || o.site || !(err instanceof ControlCallError) || err.grpcCode !== grpc.status.UNAVAILABLE) throw err;
      unavailable = err;
    }
  }
  const config = loadSiteConfig(dir);
  const shared = config.ledger && config.ledger.kind !== "sqlite" ? config.ledger : undefined;
  if (!shared && ledgerMustExist && !existsSync(config.ledgerPath)) return [];
  // A change takes the site's own lock: a site that runs but did not answer must not be written behind.
  const lock = ledgerMustExist ? undefined : lockOrExplain(dir, unavailable);
  try {
    const store = shared ? await openConfiguredLedger(shared, config.ledgerPath) : getSqliteEventStore({ path: config.ledgerPath });
    try {
      return await offline(new SiteAuthorizations(store));
    } finally {
      await store.close();
    }
  } finally {
    lock?.release();
  }
}

function lockOrExplain(dir: string, unavailable: ControlCallError | undefined): SiteLock {
  try {
    return lockSiteDirectory(dir, runDir(dir));
  } catch (err) {
    if (err instanceof SiteDirectoryInUseError) throw new SiteUnreachableError(dir, err, unavailable ?? new Error("it has no address file"));
    throw err;
  }
}

const TARGET_HELP = {
  dir: "site directory on this host (its address and admin certificate; its ledger when the site is not running)",
  cert: "client certificate (role admin to change entries, viewer to list them)",
};

export function registerAuthorize(program: Command): void {
  withTarget(program.command("authorize").description("allow a primary (by its certificate identity) to replicate to this site; needs role admin"), TARGET_HELP)
    .requiredOption("--primary <identity>", "the primary agent's certificate CN, exactly (wildcards are refused)")
    .action(async (o: Target & { primary: string }) => {
      try {
        const entries = await viaSite(
          o,
          (c) => unary(c, c.addAuthorization, { primaryIdentity: o.primary }),
          (a) => a.add(o.primary, localAdminCaller()),
        );
        emit(o.json, entries, () => show(entries));
      } catch (err) {
        fail(err, o.json);
      }
    });
  withTarget(program.command("unauthorize").description("stop a primary from replicating to this site (its next connection is refused); needs role admin"), TARGET_HELP)
    .requiredOption("--primary <identity>", "the primary's certificate CN")
    .action(async (o: Target & { primary: string }) => {
      try {
        const entries = await viaSite(
          o,
          (c) => unary(c, c.removeAuthorization, { primaryIdentity: o.primary }),
          (a) => a.remove(o.primary, localAdminCaller()),
        );
        emit(o.json, entries, () => show(entries));
      } catch (err) {
        fail(err, o.json);
      }
    });
  withTarget(program.command("authorizations").description("list the primaries allowed to replicate to this site, with who authorized them"), TARGET_HELP).action(
    async (o: Target) => {
      try {
        const entries = await viaSite(
          o,
          (c) => unary(c, c.listAuthorizations, {}),
          (a) => a.list(),
          true,
        );
        emit(o.json, entries, () => show(entries));
      } catch (err) {
        fail(err, o.json);
      }
    },
  );
  withTarget(program.command("whoami").description("the identity and role a site sees for the certificate this CLI presents"), TARGET_HELP).action(async (o: Target) => {
    try {
      const client = controlClient(o);
      const r = await unary(client, client.whoAmI, {});
      client.close();
      emit(o.json, r, () => `${r.identity} (role ${r.role}) on site ${r.siteId}`);
    } catch (err) {
      fail(err, o.json);
    }
  });
}
