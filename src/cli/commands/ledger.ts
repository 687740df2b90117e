import { resolve } from "node:path";
import type { Command } from "commander";
import { getSqliteEventStore, rebuildReadModels, verifyLedger } from "../../ledger/index.js";
import { loadSiteConfig } from "../../site/siteConfig.js";
import { formatTable } from "../table.js";
import { EXIT } from "../exitCodes.js";
import { emit, fail } from "../output.js";

export function registerLedger(program: Command): void {
  const ledger = program.command("ledger").description("the site's event-sourced ledger");
  ledger
    .command("verify")
    .description("check every stream's hash chain: detects edited, removed or moved events")
    .option("--dir <dir>", "site directory")
    .option("--file <path>", "a ledger file")
    .option("--json", "JSON output", false)
    .action(async (o: { dir?: string; file?: string; json: boolean }) => {
      try {
        const path = ledgerPathOf(o);
        const store = getSqliteEventStore({ path, create: false });
        const report = await verifyLedger(store);
        await store.close();
        emit(o.json, report, () =>
          report.ok
            ? `ledger ${path}: intact (${report.streams} streams, ${report.events} events)`
            : `ledger ${path}: TAMPERED\n` + formatTable(["stream", "version", "position", "problem"], report.problems.map((p) => [p.stream, String(p.version), String(p.globalPosition), p.reason])),
        );
        if (!report.ok) process.exitCode = EXIT.verifyFailed;
      } catch (err) {
        fail(err, o.json);
      }
    });
  ledger
    .command("rebuild")
    .description("fold every read model (status, recovery points) and relationship snapshot again from the first event")
    .option("--dir <dir>", "site directory")
    .option("--file <path>", "a ledger file")
    .option("--json", "JSON output (progress as JSON lines on stderr)", false)
    .action(async (o: { dir?: string; file?: string; json: boolean }) => {
      try {
        const path = ledgerPathOf(o);
        // Works on the file, so it needs what the site's own user has: the ledger is mode 0600.
        const store = getSqliteEventStore({ path, create: false });
        try {
          const report = await rebuildReadModels(store, (p) =>
            console.error(o.json ? JSON.stringify({ progress: { events: p.events, position: Number(p.position) } }) : `folded ${p.events} events (position ${p.position})`),
          );
          emit(o.json, { path, ...report }, () =>
            `ledger ${path}: read models rebuilt from ${report.events} events (${report.vms} relationships) in ${(report.durationMs / 1000).toFixed(2)} s`,
          );
        } finally {
          await store.close();
        }
      } catch (err) {
        fail(err, o.json);
      }
    });
}

function ledgerPathOf(o: { dir?: string; file?: string }): string {
  const path = o.file ?? (o.dir ? loadSiteConfig(resolve(o.dir)).ledgerPath : undefined);
  if (!path) throw new Error("which ledger? pass --dir SITE_DIR or --file LEDGER.sqlite");
  return path;
}
