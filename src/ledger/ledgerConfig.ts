/**
 * Which store holds a site's ledger (site.json's `ledger` field), and opening it.
 *
 *   absent or { "kind": "sqlite" }                           the embedded file at `ledgerPath`
 *   { "kind": "postgres", "url": "postgres://…", "schema"? }  a shared PostgreSQL database
 *   { "kind": "kurrentdb", "url": "kurrentdb://…", "namespace"? }  a KurrentDB server or cluster
 *
 * A password may stay out of site.json: `pg` reads PGPASSWORD (and the other libpq variables)
 * from the environment when the URL has none.
 */
import { z } from "zod";
import type { Logger } from "../common/logger.js";
import type { EventStore } from "./eventStore.js";
import { getSqliteEventStore } from "./sqlite/sqliteEventStore.js";

const identifier = z.string().regex(/^[a-z_][a-z0-9_]{0,39}$/, "use 1-40 characters a-z, 0-9 and _, starting with a letter or _");

export const ledgerConfigSchema = z.discriminatedUnion(
  "kind",
  [
    z.object({ kind: z.literal("sqlite") }).strict(),
    z
      .object({
        kind: z.literal("postgres"),
        url: z.string().regex(/^postgres(ql)?:\/\//, "must be a postgres:// or postgresql:// URL"),
        schema: identifier.optional(),
      })
      .strict(),
    z
      .object({
        kind: z.literal("kurrentdb"),
        url: z.string().regex(/^(kurrentdb|kdb|esdb|kurrent)(\+discover)?:\/\//, "must be a kurrentdb:// (or kurrentdb+discover://) connection string"),
        namespace: z
          .string()
          .regex(/^[A-Za-z0-9_.-]{1,64}$/, "use 1-64 characters A-Z, a-z, 0-9, _ . -")
          .optional(),
      })
      .strict(),
  ],
  { error: 'must have "kind": "sqlite", "postgres" or "kurrentdb"' },
);

export type LedgerConfig = z.infer<typeof ledgerConfigSchema>;

/** Problems with `value` as a ledger config, each naming its field (`ledger.url`), or the parsed config. */
export function parseLedgerConfig(value: unknown): { ok: true; config: LedgerConfig } | { ok: false; problems: string[] } {
  const r = ledgerConfigSchema.safeParse(value);
  if (r.success) return { ok: true, config: r.data };
  return {
    ok: false,
    problems: r.error.issues.map((i) => {
      const field = ["ledger", ...i.path.map(String)].join(".");
      if (i.code === "invalid_union") return `field '${field}' must have "kind": "sqlite", "postgres" or "kurrentdb"`;
      return `field '${field}': ${i.message}`;
    }),
  };
}

/** Where a ledger is, for messages: never a password. */
export function describeLedger(config: LedgerConfig, sqlitePath: string): string {
  if (config.kind === "sqlite") return sqlitePath;
  const url = config.url.replace(/\/\/([^:@/]+):([^@/]+)@/, "//$1:***@");
  return config.kind === "postgres" ? `${url} (schema ${config.schema ?? "qreplica"})` : `${url}${config.namespace ? ` (namespace ${config.namespace})` : ""}`;
}

export interface OpenLedgerOptions {
  /** For SQLite: create the file when missing (default true). Shared stores always create their tables. */
  create?: boolean;
  logger?: Logger;
}

export async function openConfiguredLedger(config: LedgerConfig, sqlitePath: string, opts: OpenLedgerOptions = {}): Promise<EventStore> {
  switch (config.kind) {
    case "sqlite":
      return getSqliteEventStore({ path: sqlitePath, create: opts.create ?? true, ...(opts.logger ? { logger: opts.logger } : {}) });
    // The shared stores' clients are loaded only for them: a SQLite site (most) would otherwise
    // hold the KurrentDB client (its own gRPC stubs and protobuf code) and pg in memory for
    // nothing, about 15 MiB of its RSS.
    case "postgres": {
      const { getPostgresEventStore } = await import("./postgres/postgresEventStore.js");
      return getPostgresEventStore({ url: config.url, ...(config.schema ? { schema: config.schema } : {}), ...(opts.logger ? { logger: opts.logger } : {}) });
    }
    case "kurrentdb": {
      const { getKurrentDbEventStore } = await import("./kurrentdb/kurrentDbEventStore.js");
      return getKurrentDbEventStore({ url: config.url, ...(config.namespace ? { namespace: config.namespace } : {}), ...(opts.logger ? { logger: opts.logger } : {}) });
    }
  }
}
