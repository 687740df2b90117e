import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, openSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { addressFile } from "../src/site/siteConfig.js";
import { waitFor } from "../test/helpers/processes.js";
import { benchScratch, type Cleanup } from "./lib/cleanup.js";
import { median } from "./lib/stats.js";
import type { BenchContext, BenchResult } from "./report.js";

const ROOT = resolve(import.meta.dirname, "..");
const TIME = "/usr/bin/time";

/** What an installed bin sees: this Node first on PATH (the bins' `#!/usr/bin/env node`), no tsx loaders, no npm_* variables. */
function installedEnv(prefix: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("npm_") && k !== "NODE_OPTIONS" && k !== "NODE_PATH") env[k] = v;
  env.PATH = [join(prefix, "bin"), dirname(process.execPath), "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"].join(":");
  return env;
}

function mustRun(command: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv }): string {
  const r = spawnSync(command, args, { ...opts, encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${command} ${args.join(" ")} exited ${r.status ?? r.signal}: ${r.stderr}${r.stdout}${r.error ?? ""}`);
  return r.stdout;
}

/**
 * The packed tarball installed into `dir/prefix` as README "Install" does it (native addons built
 * against this Node's headers when it has them, as scripts/install.sh's Node 24 does); or the
 * prefix of an earlier install given in QR_BENCH_PREFIX, which saves the 2-5 minutes of compiling.
 */
function installedPrefix(dir: string, log: (m: string) => void): string {
  const given = process.env.QR_BENCH_PREFIX;
  if (given) {
    if (!existsSync(join(given, "bin/qreplica"))) throw new Error(`QR_BENCH_PREFIX=${given} has no bin/qreplica: unset it to install the tarball`);
    log(`using the installed package in ${given} (QR_BENCH_PREFIX)`);
    return given;
  }
  const prefix = join(dir, "prefix");
  mkdirSync(join(dir, "pack"));
  let t0 = Date.now();
  mustRun("npm", ["pack", "--pack-destination", join(dir, "pack")], { cwd: ROOT, env: process.env });
  const tarball = join(dir, "pack", readdirSync(join(dir, "pack")).find((f) => f.endsWith(".tgz"))!);
  log(`npm pack (with the build) ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const env: NodeJS.ProcessEnv = { ...process.env, npm_config_build_from_source: "true" };
  const nodeDir = resolve(dirname(process.execPath), "..");
  if (existsSync(join(nodeDir, "include/node/node.h"))) env.npm_config_nodedir = nodeDir;
  t0 = Date.now();
  mustRun("npm", ["install", "-g", "--prefix", prefix, "--prefer-offline", "--no-audit", "--no-fund", "--allow-scripts=better-sqlite3,zstd-napi", tarball], { cwd: dir, env });
  log(`npm install -g of the tarball ${((Date.now() - t0) / 1000).toFixed(1)} s (set QR_BENCH_PREFIX=${prefix} with QR_KEEP=1 to reuse it)`);
  return prefix;
}

/** A site made and served by the installed bins; its stop is deferred to `cleanup`. */
async function servedSite(prefix: string, dir: string, cleanup: Cleanup): Promise<string> {
  const env = installedEnv(prefix);
  const q = (args: string[]) => mustRun(join(prefix, "bin/qreplica"), args, { cwd: dir, env });
  const site = join(dir, "site");
  q(["pki", "create-ca", "--dir", join(dir, "ca")]);
  q(["site", "init", "--dir", site, "--name", "site-b", "--ca-dir", join(dir, "ca"), "--listen", "127.0.0.1:0"]);
  const log = openSync(join(dir, "site.log"), "a", 0o600);
  const child = spawn(join(prefix, "bin/qreplica"), ["site", "serve", "--dir", site], { cwd: dir, env, stdio: ["ignore", log, log] });
  cleanup.defer("stop the site", async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
  });
  await waitFor("the site's address file", () => (existsSync(addressFile(site)) ? readFileSync(addressFile(site), "utf8").trim() || undefined : undefined), 60_000);
  return site;
}

interface Sample {
  seconds: number;
  rssMiB: number;
}

/** One run under GNU time: wall time around it (the same spawn overhead for every command) and its peak RSS (wait4's ru_maxrss). */
function measure(dir: string, command: string[], env: NodeJS.ProcessEnv): Sample {
  const out = join(dir, "time.out");
  const t0 = process.hrtime.bigint();
  const r = spawnSync(TIME, ["-f", "%M", "-o", out, ...command], { cwd: dir, env, encoding: "utf8", maxBuffer: 64 << 20 });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${command.join(" ")} exited ${r.status ?? r.signal}: ${r.stderr}${r.stdout}`);
  return { seconds, rssMiB: Number(readFileSync(out, "utf8").trim().split("\n").pop()) / 1024 };
}

/**
 * cli-start: wall time and peak RSS of the installed `qreplica --help` and `qreplica status --json`
 * (the latter against a running site: mutual TLS to its control plane and back), from the packed
 * tarball installed into a clean prefix, beside `node -e 0` on the same Node in the same rounds
 * (the three interleaved, order rotating; medians). Ratio = command / `node -e 0` (what qreplica
 * adds to Node's own start).
 */
export async function cliStart(ctx: BenchContext): Promise<BenchResult[]> {
  if (!existsSync(TIME)) throw new Error(`cli-start reads peak RSS through ${TIME}: install Debian's time package (scripts/install.sh does)`);
  const rounds = ctx.quick ? 7 : 15;
  const { dir, cleanup } = benchScratch("qr-bench-cli-", ctx.log);
  try {
    const prefix = installedPrefix(dir, ctx.log);
    const site = await servedSite(prefix, dir, cleanup);
    const env = installedEnv(prefix);
    const qreplica = join(prefix, "bin/qreplica");
    const commands: Record<string, string[]> = {
      "node -e 0": [process.execPath, "-e", "0"],
      "qreplica --help": [qreplica, "--help"],
      "qreplica status --json": [qreplica, "status", "--dir", site, "--json"],
    };
    const names = Object.keys(commands);
    const samples = new Map<string, Sample[]>(names.map((n) => [n, []]));
    for (const n of names) measure(dir, commands[n]!, env); // warm the page cache once
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < names.length; i++) {
        const n = names[(r + i) % names.length]!;
        samples.get(n)!.push(measure(dir, commands[n]!, env));
      }
    }
    const wall = (n: string) => median(samples.get(n)!.map((s) => s.seconds));
    const rss = (n: string) => median(samples.get(n)!.map((s) => s.rssMiB));
    for (const n of names)
      ctx.log(
        `${n}: wall ${samples
          .get(n)!
          .map((s) => s.seconds.toFixed(2))
          .join(", ")} s; peak RSS ${samples
          .get(n)!
          .map((s) => s.rssMiB.toFixed(0))
          .join(", ")} MiB`,
      );
    const base = "node -e 0";
    const node = `Node ${process.versions.node}`;
    const results: BenchResult[] = [];
    for (const [id, n] of [
      ["help", "qreplica --help"],
      ["status", "qreplica status --json"],
    ] as const) {
      results.push(
        {
          name: `cli-start-${id}`,
          description: `installed \`${n}\`${id === "status" ? " against a running site" : ""}, wall time, median of ${rounds} interleaved runs, ${node}`,
          value: wall(n),
          unit: "s",
          baseline: wall(base),
          baselineDescription: "`node -e 0` in the same rounds",
          ratio: wall(n) / wall(base),
        },
        {
          name: `cli-start-${id}-rss`,
          description: `installed \`${n}\`, peak RSS, median of ${rounds} runs, ${node}`,
          value: rss(n),
          unit: "MiB",
          baseline: rss(base),
          baselineDescription: "`node -e 0` in the same rounds",
          ratio: rss(n) / rss(base),
        },
      );
    }
    return results;
  } finally {
    await cleanup.runAll();
  }
}
