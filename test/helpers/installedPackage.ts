import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, openSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { getSqliteEventStore, loadRelationship } from "../../src/ledger/index.js";

// The product as an operator gets it: `npm pack` (which builds dist/), the tarball installed into an
// empty prefix with `npm install -g`, and everything after that run with the installed bins only,
// from a directory outside the checkout, on a PATH without node_modules/.bin (no tsx, no tsc).
// The native addons (better-sqlite3, zstd-napi) compile from source during the install: 2 to 5
// minutes on 2 shared cores. Packuments come from the registry; tarballs from npm's cache where
// `npm ci` left them (--prefer-offline). One install per test file: it is the slow part.

const ROOT = resolve(import.meta.dirname, "../..");
const MiB = 1024 * 1024;

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface InstalledPackage {
  prefix: string;
  /** The installed package's directory (lib/node_modules/qreplica). */
  installed: string;
  /** Where commands run: a directory outside the checkout. */
  workDir: string;
  bin(name: "qreplica" | "qreplica-agent"): string;
  /** The installed bins' environment: no NODE_OPTIONS (vitest's loaders), no npm_*, a PATH of system tools, node and the prefix only. */
  env(): NodeJS.ProcessEnv;
  run(command: string, args: string[], opts?: { cwd?: string; env?: NodeJS.ProcessEnv }): RunResult;
  /** `qreplica ARGS` with the installed bin; a non-zero exit throws with what it printed. */
  qreplica(args: string[]): string;
  /** A long-running installed bin (site server, agent) logging to `log`; killed by `stopAll`. */
  daemon(name: "qreplica" | "qreplica-agent", args: string[], log: string): ChildProcess;
  stopAll(): Promise<void>;
}

/** Packs the checkout and installs the tarball into `<dir>/prefix`; returns how to run what it installed. */
export function installPackage(dir: string): InstalledPackage {
  const prefix = join(dir, "prefix");
  const workDir = join(dir, "work");
  mkdirSync(workDir, { recursive: true });
  mkdirSync(join(dir, "pack"), { recursive: true });
  const children: ChildProcess[] = [];

  const env = (): NodeJS.ProcessEnv => {
    const out: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("npm_") && !k.startsWith("VITEST") && k !== "NODE_OPTIONS" && k !== "NODE_PATH") out[k] = v;
    out.PATH = [join(prefix, "bin"), dirname(process.execPath), "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"].join(":");
    return out;
  };
  const run = (command: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): RunResult => {
    const r = spawnSync(command, args, { cwd: opts.cwd ?? workDir, env: opts.env ?? env(), encoding: "utf8", maxBuffer: 64 * MiB });
    return { code: r.status ?? -1, stdout: r.stdout ?? "", stderr: `${r.stderr ?? ""}${r.error ? String(r.error) : ""}` };
  };
  const bin = (name: string) => join(prefix, "bin", name);

  const started = Date.now();
  const pack = run("npm", ["pack", "--pack-destination", join(dir, "pack")], { cwd: ROOT, env: process.env });
  if (pack.code !== 0) throw new Error(`npm pack failed: ${pack.stderr}${pack.stdout}`);
  const tarball = join(dir, "pack", readdirSync(join(dir, "pack")).find((f) => f.endsWith(".tgz"))!);
  const packed = Date.now();
  const installEnv: NodeJS.ProcessEnv = { ...env(), PATH: process.env.PATH, npm_config_build_from_source: "true" };
  // The addons must be built for the Node that runs the bins (this one): its own headers, as
  // scripts/install.sh's Node 24 in /opt/qreplica/node has them, not npm's configured nodedir.
  const nodeDir = resolve(dirname(process.execPath), "..");
  if (existsSync(join(nodeDir, "include/node/node.h"))) installEnv.npm_config_nodedir = nodeDir;
  const install = run("npm", ["install", "-g", "--prefix", prefix, "--prefer-offline", "--no-audit", "--no-fund", "--allow-scripts=better-sqlite3,zstd-napi", tarball], {
    env: installEnv,
  });
  if (install.code !== 0) throw new Error(`npm install of ${tarball} failed: ${install.stderr}${install.stdout}`);
  console.log(`installed package: npm pack (with the build) ${((packed - started) / 1000).toFixed(1)} s, npm install -g ${((Date.now() - packed) / 1000).toFixed(1)} s`);

  return {
    prefix,
    installed: join(prefix, "lib/node_modules/qreplica"),
    workDir,
    bin,
    env,
    run,
    qreplica(args) {
      const r = run(bin("qreplica"), args);
      if (r.code !== 0) throw new Error(`installed qreplica ${args.join(" ")} exited ${r.code}: ${r.stderr}${r.stdout}`);
      return r.stdout;
    },
    daemon(name, args, log) {
      const fd = openSync(log, "a", 0o600);
      const child = spawn(bin(name), args, { cwd: workDir, env: { ...env(), QREPLICA_LOG_LEVEL: "debug", QREPLICA_ACCEL: "tcg" }, stdio: ["ignore", fd, fd] });
      children.push(child);
      return child;
    },
    async stopAll() {
      await Promise.all(
        children.splice(0).map(
          (c) =>
            new Promise<void>((done) => {
              if (c.exitCode !== null || c.signalCode !== null) return done();
              c.once("exit", () => done());
              c.kill("SIGTERM");
              setTimeout(() => c.kill("SIGKILL"), 8_000).unref();
            }),
        ),
      );
    },
  };
}

/** A point's top image, as the site's ledger records it (read by the test, through the sources). */
export async function pointImage(siteDir: string, vmId: string, pointId: string): Promise<string> {
  const store = getSqliteEventStore({ path: join(siteDir, "ledger.sqlite"), create: false });
  try {
    const point = (await loadRelationship(store, vmId)).state.points.find((p) => p.pointId === pointId);
    if (!point) throw new Error(`point ${pointId} of ${vmId} is not in ${siteDir}'s ledger`);
    return point.disks[0]!.imagePath;
  } finally {
    await store.close();
  }
}
