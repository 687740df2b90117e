import { resolve } from "node:path";
import type { Command } from "commander";
import { getSqliteEventStore, verifyLedger } from "../../ledger/index.js";
import { loadSiteConfig } from "../../site/siteConfig.js";
import { formatTable } from "../table.js";
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
        const path = o.file ?? (o.dir ? loadSiteConfig(resolve(o.dir)).ledgerPath : undefined);
        if (!path) throw new Error("which ledger? pass --dir SITE_DIR or --file LEDGER.sqlite");
        const store = getSqliteEventStore({ path, create: false });
        const report = await verifyLedger(store);
        await store.close();
        emit(o.json, report, () =>
          report.ok
            ? `ledger ${path}: intact (${report.streams} streams, ${report.events} events)`
            : `ledger ${path}: TAMPERED\n` + formatTable(["stream", "version", "position", "problem"], report.problems.map((p) => [p.stream, String(p.version), String(p.globalPosition), p.reason])),
        );
        if (!report.ok) process.exitCode = 3;
      } catch (err) {
        fail(err, o.json);
      }
    });
}
