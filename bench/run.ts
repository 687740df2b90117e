import { loadavg } from "node:os";
import { writeFileSync } from "node:fs";
import { Command } from "commander";
import { captureRead } from "./captureRead.js";
import { e2eThroughput } from "./e2eThroughput.js";
import { agentPeakRss } from "./agentPeakRss.js";
import { resync } from "./resync.js";
import { fleet } from "./fleet.js";
import { smallCycle } from "./smallCycle.js";
import { failoverRto } from "./failoverRto.js";
import { rpoUnderLoad } from "./rpoUnderLoad.js";
import { agentCpuPerGib } from "./agentCpuPerGib.js";
import { wan } from "./wan.js";
import { commandAtAge, ledgerAppend, projectionRebuild } from "./ledgerAge.js";
import { cliStart } from "./cliStart.js";
import { zstdCodecs } from "./zstdCodecs.js";
import { groupCutoff } from "./groupCutoff.js";
import { formatResult, type BenchResult, type Benchmark } from "./report.js";

const benchmarks: Record<string, Benchmark> = {
  "capture-read": captureRead,
  "e2e-throughput": e2eThroughput,
  "agent-peak-rss": agentPeakRss,
  resync,
  fleet,
  "small-cycle": smallCycle,
  "failover-rto": failoverRto,
  "rpo-under-load": rpoUnderLoad,
  "agent-cpu-per-gib": agentCpuPerGib,
  wan,
  "ledger-append": ledgerAppend,
  "projection-rebuild": projectionRebuild,
  "command-at-age": commandAtAge,
  "cli-start": cliStart,
  "zstd-codec": zstdCodecs,
  "group-cutoff": groupCutoff,
};

const program = new Command()
  .name("bench")
  .description("Runs qreplica's benchmarks; each figure is printed beside a baseline measured in the same run")
  .option("--json <file>", "also write the results as JSON to FILE")
  .option("--quick", "smaller data sets", false)
  .option("--only <names>", "comma-separated benchmark names")
  .parse();

const opts = program.opts<{ json?: string; quick: boolean; only?: string }>();
const selected = opts.only ? opts.only.split(",") : Object.keys(benchmarks);
const results: BenchResult[] = [];
const runStarted = Date.now();
for (const name of selected) {
  const bench = benchmarks[name];
  if (!bench) {
    console.error(`unknown benchmark '${name}'; known: ${Object.keys(benchmarks).join(", ")}`);
    process.exit(2);
  }
  const started = Date.now();
  const out = await bench({ quick: opts.quick, log: (m) => console.error(`[${name}] ${m}`) });
  for (const r of out) {
    console.log(formatResult(r));
    results.push(r);
  }
  console.error(`[${name}] done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
// The bound is on the whole run (under 20 minutes on a 2-core machine): said, not summed by hand.
console.error(
  `[bench] ${selected.length} benchmarks done in ${((Date.now() - runStarted) / 1000).toFixed(1)} s (load average ${loadavg()
    .map((l) => l.toFixed(1))
    .join(", ")})`,
);
if (opts.json) {
  const json = Object.fromEntries(results.map((r) => [r.name, { value: r.value, unit: r.unit, baseline: r.baseline, ratio: r.ratio }]));
  writeFileSync(opts.json, JSON.stringify(json, null, 2) + "\n");
}
