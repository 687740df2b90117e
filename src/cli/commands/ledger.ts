import { existsSync } from "node:fs";
import { resolve } from "node:path";
import type { Command } from "commander";
import { getSqliteEventStore, rebuildReadModels, verifyLedger, type EventStore } from "../../ledger/index.js";
import { describeLedger, openConfiguredLedger, parseLedgerConfig, type LedgerConfig } from "../../ledger/ledgerConfig.js";
import { migrateLedger, type VerbatimImporter } from "../../ledger/migrate.js";
import { LedgerOpenError } from "../../ledger/errors.js";
import { loadSiteConfig, runDir } from "../../site/siteConfig.js";
import { lockSiteDirectory } from "../../site/siteLock.js";
import { formatTable } from "../table.js";
import { EXIT, InvalidCliArgumentError } from "../exitCodes.js";
import { emit, fail } from "../output.js";

interface Where {
  dir?: string;
  file?: string;
  url?: string;
  schema?: string;
  namespace?: string;
}

const URL_HELP = "a shared ledger: postgres://… or kurrentdb://…";

export function registerLedger(program: Command): void {
  const ledger = program.command("ledger").description("the site's event-sourced ledger");
  ledger
    .command("verify")
    .description("check every stream's hash chain: detects edited, removed or moved events")
    .option("--dir <dir>", "site directory (its configured ledger: SQLite file or shared store)")
    .option("--file <path>", "a ledger file")
    .option("--url <url>", URL_HELP)
    .option("--schema <name>", "PostgreSQL schema of the ledger (with --url; default qreplica)")
    .option("--namespace <ns>", "KurrentDB stream namespace of the ledger (with --url)")
    .option("--json", "JSON output", false)
    .action(async (o: Where & { json: boolean }) => {
      try {
        const { store, name } = await openLedgerOf(o);
        const report = await verifyLedger(store).finally(() => store.close());
        emit(o.json, { ledger: name, ...report }, () =>
          report.ok
            ? `ledger ${name}: intact (${report.streams} streams, ${report.events} events)`
            : `ledger ${name}: TAMPERED\n` +
              formatTable(
                ["stream", "version", "position", "problem"],
                report.problems.map((p) => [p.stream, String(p.version), String(p.globalPosition), p.reason]),
              ),
        );
        if (!report.ok) process.exitCode = EXIT.verifyFailed;
      } catch (err) {
        fail(err, o.json);
      }
    });
  ledger
    .command("rebuild")
    .description("fold every read model (status, recovery points) and relationship snapshot again from the first event")
    .option("--dir <dir>", "site directory (its configured ledger)")
    .option("--file <path>", "a ledger file")
    .option("--url <url>", URL_HELP)
    .option("--schema <name>", "PostgreSQL schema of the ledger (with --url)")
    .option("--namespace <ns>", "KurrentDB stream namespace of the ledger (with --url)")
    .option("--json", "JSON output (progress as JSON lines on stderr)", false)
    .action(async (o: Where & { json: boolean }) => {
      try {
        // A file needs what the site's own user has: the ledger is mode 0600.
        const { store, name } = await openLedgerOf(o);
        try {
          const report = await rebuildReadModels(store, (p) =>
            console.error(o.json ? JSON.stringify({ progress: { events: p.events, position: Number(p.position) } }) : `folded ${p.events} events (position ${p.position})`),
          );
          emit(
            o.json,
            { path: name, ...report },
            () => `ledger ${name}: read models rebuilt from ${report.events} events (${report.vms} relationships) in ${(report.durationMs / 1000).toFixed(2)} s`,
          );
        } finally {
          await store.close();
        }
      } catch (err) {
        fail(err, o.json);
      }
    });
  ledger
    .command("migrate")
    .description(
      "copy a site's SQLite ledger into an empty shared store (PostgreSQL or KurrentDB), hash chains verified before and after; run it on the site host with the site stopped",
    )
    .option("--dir <dir>", "site directory: its SQLite ledger is the source, and the site must be stopped")
    .option("--file <path>", "a SQLite ledger file as the source")
    .requiredOption("--to <url>", "the destination: postgres://… or kurrentdb://…")
    .option("--schema <name>", "PostgreSQL schema to create the ledger in (default qreplica)")
    .option("--namespace <ns>", "KurrentDB stream namespace to write under")
    .option("--json", "JSON output", false)
    .action(async (o: { dir?: string; file?: string; to: string; schema?: string; namespace?: string; json: boolean }) => {
      try {
        const dir = o.dir ? resolve(o.dir) : undefined;
        const path = o.file ? resolve(o.file) : dir ? loadSiteConfig(dir).ledgerPath : undefined;
        if (!path) throw new InvalidCliArgumentError("which ledger? pass --dir SITE_DIR or --file LEDGER.sqlite");
        if (!existsSync(path)) throw new LedgerOpenError(`No qreplica ledger at ${path}: nothing to migrate`, path);
        const target = sharedConfig(o.to, o);
        const toName = describeLedger(target, path);
        // The site's own lock: a running site would append events the copy misses.
        const lock = dir ? lockSiteDirectory(dir, runDir(dir)) : undefined;
        try {
          const source = getSqliteEventStore({ path, create: false });
          try {
            const destination = (await openConfiguredLedger(target, path)) as VerbatimImporter;
            try {
              const report = await migrateLedger(source, destination, {
                destinationName: toName,
                onProgress: (n) => console.error(o.json ? JSON.stringify({ progress: { copied: n } }) : `copied ${n} events`),
              });
              const siteJson =
                target.kind === "postgres"
                  ? { kind: target.kind, url: "…", ...(target.schema ? { schema: target.schema } : {}) }
                  : { kind: target.kind, url: "…", ...(target.namespace ? { namespace: target.namespace } : {}) };
              emit(
                o.json,
                { from: path, to: toName, ...report },
                () =>
                  `ledger ${path} copied to ${toName}: ${report.events} events in ${report.streams} streams, hash chains verified on both sides (${(report.durationMs / 1000).toFixed(2)} s)\n` +
                  `next: set "ledger": ${JSON.stringify(siteJson)} in site.json, then start the site`,
              );
            } finally {
              await destination.close();
            }
          } finally {
            await source.close();
          }
        } finally {
          lock?.release();
        }
      } catch (err) {
        fail(err, o.json);
      }
    });
}

function sharedConfig(url: string, o: { schema?: string; namespace?: string }): Exclude<LedgerConfig, { kind: "sqlite" }> {
  const kind = /^postgres(ql)?:/.test(url) ? "postgres" : "kurrentdb";
  const raw = kind === "postgres" ? { kind, url, ...(o.schema ? { schema: o.schema } : {}) } : { kind, url, ...(o.namespace ? { namespace: o.namespace } : {}) };
  const r = parseLedgerConfig(raw);
  if (!r.ok) throw new InvalidCliArgumentError(r.problems.join("; ").replaceAll("field 'ledger.", "option '--").replaceAll("--url'", "--url/--to'"));
  if (r.config.kind === "sqlite") throw new Error("unreachable");
  return r.config;
}

async function openLedgerOf(o: Where): Promise<{ store: EventStore; name: string }> {
  if (o.url) {
    const config = sharedConfig(o.url, o);
    return { store: await openConfiguredLedger(config, ""), name: describeLedger(config, "") };
  }
  if (o.file) return { store: getSqliteEventStore({ path: o.file, create: false }), name: o.file };
  if (!o.dir) throw new InvalidCliArgumentError("which ledger? pass --dir SITE_DIR, --file LEDGER.sqlite or --url postgres://…|kurrentdb://…");
  const config = loadSiteConfig(resolve(o.dir));
  const ledger = config.ledger ?? { kind: "sqlite" as const };
  return { store: await openConfiguredLedger(ledger, config.ledgerPath, { create: false }), name: describeLedger(ledger, config.ledgerPath) };
}
