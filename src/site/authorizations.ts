import { existsSync, readFileSync, renameSync } from "node:fs";
import { hostname, userInfo } from "node:os";
import { z } from "zod";
import { problemsText, schemaProblems, text } from "../common/configSchema.js";
import { QreplicaError } from "../common/errors.js";
import type { Logger } from "../common/logger.js";
import { isWrongExpectedVersionError, type EventStore, type RecordedEvent } from "../ledger/index.js";
import { actorMetadata, type Caller } from "./controlPlane/caller.js";
import { authorizationsFile } from "./siteConfig.js";

/**
 * Authorization entries (which primaries may replicate to this site, as Hyper-V Replica's) live in
 * the ledger, stream `authorizations`: every change is hash-chained and names who made it. There
 * are no trust groups and no per-entry storage roots: every replica is stored under the site's
 * storageRoot (site.json), and an entry names exactly one primary identity, never a pattern.
 */
export const AUTHORIZATIONS_STREAM = "authorizations";
export const AUTHORIZATION_ADDED = "AuthorizationAdded";
export const AUTHORIZATION_REMOVED = "AuthorizationRemoved";

export interface AuthorizationEntry {
  /** The primary's certificate identity (subject CN). */
  primaryIdentity: string;
  addedBy: string;
  addedByRole: string;
  addedAt: string;
}

/** An entry that would match more than one identity, such as `*`: any CA-signed key could then replicate here. */
export class AuthorizationWildcardError extends QreplicaError {
  readonly code = "AUTHORIZATION_WILDCARD" as const;
}

/** An identity that no certificate can carry, or an option this site does not support. */
export class AuthorizationInvalidError extends QreplicaError {
  readonly code = "AUTHORIZATION_INVALID" as const;
}

export class AuthorizationNotFoundError extends QreplicaError {
  readonly code = "AUTHORIZATION_NOT_FOUND" as const;
}

const DNS_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
const IDENTITY = new RegExp(`^${DNS_LABEL}(?:\\.${DNS_LABEL})*$`);

/** Refuses wildcards and anything `qreplica pki issue` could not have put in a CN. */
export function checkPrimaryIdentity(identity: string): void {
  if (/[*?]/.test(identity)) {
    throw new AuthorizationWildcardError(
      `'${identity}' is a wildcard: an entry that accepts any primary would let every certificate of the CA (a viewer's, another site's) replicate here. ` +
        "Authorize each primary by its certificate identity, e.g. 'qreplica authorize --dir SITE_DIR --primary agent-a'",
    );
  }
  if (identity.length === 0 || identity.length > 253 || !IDENTITY.test(identity)) {
    throw new AuthorizationInvalidError(`'${identity}' is not a certificate identity: give the primary's CN as 'qreplica pki issue --name' made it (letters, digits, '-' and '.')`);
  }
}

/** Who acts when the CLI writes the ledger of a site that is not running: whoever may write its files. */
export function localAdminCaller(): Caller {
  let user = "unknown";
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry (containers): the host still says where it happened
  }
  return { identity: `local-admin:${user}@${hostname()}`, role: "admin" };
}

function fold(events: readonly RecordedEvent[]): AuthorizationEntry[] {
  const entries = new Map<string, AuthorizationEntry>();
  for (const e of events) {
    const identity = String(e.data.primaryIdentity);
    if (e.type === AUTHORIZATION_ADDED) {
      entries.set(identity, {
        primaryIdentity: identity,
        addedBy: typeof e.metadata.actor === "string" ? e.metadata.actor : "",
        addedByRole: typeof e.metadata.actorRole === "string" ? e.metadata.actorRole : "",
        addedAt: e.recordedAt.toISOString(),
      });
    } else if (e.type === AUTHORIZATION_REMOVED) {
      entries.delete(identity);
    }
  }
  return [...entries.values()].sort((a, b) => a.primaryIdentity.localeCompare(b.primaryIdentity));
}

const MAX_ATTEMPTS = 5;

/**
 * The site's authorization entries, read from the ledger. The data plane asks at every Hello; the
 * fold is cached and re-read only when the stream's version moved, so a change (through the
 * control plane, or written by the CLI while the site was down) takes effect at the next Hello.
 */
export class SiteAuthorizations {
  private cache: { version: bigint | undefined; entries: AuthorizationEntry[] } | undefined;

  constructor(private readonly store: EventStore) {}

  async list(): Promise<AuthorizationEntry[]> {
    const version = await this.store.streamVersion(AUTHORIZATIONS_STREAM);
    if (this.cache && this.cache.version === version) return this.cache.entries;
    const events = await this.store.readStream(AUTHORIZATIONS_STREAM);
    const entries = fold(events);
    this.cache = { version: events.at(-1)?.version, entries };
    return entries;
  }

  async find(identity: string): Promise<AuthorizationEntry | undefined> {
    return (await this.list()).find((e) => e.primaryIdentity === identity);
  }

  /** Idempotent: an identity already authorized is left as it is (no event). */
  async add(identity: string, caller: Caller): Promise<AuthorizationEntry[]> {
    checkPrimaryIdentity(identity);
    return this.change(caller, (entries) => (entries.some((e) => e.primaryIdentity === identity) ? undefined : { type: AUTHORIZATION_ADDED, data: { primaryIdentity: identity } }));
  }

  async remove(identity: string, caller: Caller): Promise<AuthorizationEntry[]> {
    return this.change(caller, (entries) => {
      if (!entries.some((e) => e.primaryIdentity === identity)) {
        throw new AuthorizationNotFoundError(`'${identity}' is not authorized on this site (authorized: ${entries.map((e) => e.primaryIdentity).join(", ") || "none"})`);
      }
      return { type: AUTHORIZATION_REMOVED, data: { primaryIdentity: identity } };
    });
  }

  private async change(caller: Caller, decide: (entries: AuthorizationEntry[]) => { type: string; data: Record<string, unknown> } | undefined): Promise<AuthorizationEntry[]> {
    for (let attempt = 1; ; attempt++) {
      const events = await this.store.readStream(AUTHORIZATIONS_STREAM);
      const event = decide(fold(events));
      if (!event) return fold(events);
      try {
        await this.store.append(AUTHORIZATIONS_STREAM, [{ ...event, metadata: actorMetadata(caller) }], events.at(-1)?.version ?? "no_stream");
        return this.list();
      } catch (err) {
        // Another writer (the site, or a CLI while the site is down) changed the entries: decide again.
        if (!isWrongExpectedVersionError(err) || attempt >= MAX_ATTEMPTS) throw err;
      }
    }
  }
}

/**
 * An entry of the old authorizations.json: its trust group and storage root are from before every
 * replica was stored under the site's storageRoot, read and dropped; any other key is a mistake.
 */
const legacyEntriesSchema = z.array(
  z.strictObject({
    primaryIdentity: text("give the primary's certificate identity (CN), e.g. agent-a"),
    trustGroup: z.string().optional(),
    storageRoot: z.string().optional(),
  }),
);

/**
 * Sites made before the ledger held authorization entries kept them in authorizations.json. At
 * start the file is imported once (recorded as done by the site itself) and renamed, so existing
 * deployments keep replicating; a wildcard in it stops the start, with the fix.
 */
export async function importLegacyAuthorizations(dir: string, authz: SiteAuthorizations, siteId: string, logger: Logger): Promise<string[]> {
  const path = authorizationsFile(dir);
  if (!existsSync(path)) return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new AuthorizationInvalidError(`${path} is not valid JSON: fix it (an array of { "primaryIdentity": "agent-a" }) or remove it and use 'qreplica authorize'`, {
      cause: err,
    });
  }
  const entries = legacyEntriesSchema.safeParse(parsed, { reportInput: true });
  if (!entries.success) {
    throw new AuthorizationInvalidError(
      `${path}: ${problemsText(schemaProblems(legacyEntriesSchema, entries.error))}. Fix the file (an array of { "primaryIdentity": "agent-a" }) or remove it and use 'qreplica authorize'`,
    );
  }
  const identities = entries.data.map((e) => e.primaryIdentity);
  for (const identity of identities) {
    if (/[*?]/.test(identity)) {
      throw new AuthorizationWildcardError(
        `${path} holds the wildcard entry '${identity}', which would let any certificate of the CA replicate here; this site no longer accepts wildcards. ` +
          `Replace it in the file with one entry per primary identity (e.g. [{ "primaryIdentity": "agent-a" }]) and start the site again`,
      );
    }
  }
  entries.data.forEach((_, i) => {
    try {
      checkPrimaryIdentity(identities[i]!);
    } catch (err) {
      if (err instanceof AuthorizationInvalidError) throw new AuthorizationInvalidError(`${path}: [${i}].primaryIdentity: ${err.message}`, { cause: err });
      throw err;
    }
  });
  if (entries.data.some((e) => e.storageRoot !== undefined)) {
    logger.warn({ file: path }, "storageRoot in authorizations.json is not imported: every replica is stored under the site's storageRoot (site.json)");
  }
  const importer: Caller = { identity: `${siteId} (imported ${path})`, role: "admin" };
  for (const identity of identities) await authz.add(identity, importer);
  const done = `${path}.imported`;
  renameSync(path, done);
  logger.warn(
    { file: path, renamedTo: done, entries: identities },
    "authorization entries imported from authorizations.json into the ledger; manage them with 'qreplica authorize' from now on",
  );
  return identities as string[];
}
