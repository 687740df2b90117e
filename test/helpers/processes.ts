import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, openSync, readFileSync } from "node:fs";
import { resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "../..");
export const CLI = resolve(ROOT, "src/cli/main.ts");
export const AGENT = resolve(ROOT, "replica-agent/main.ts");
/** The installed commands (compiled dist/ behind them: `npm run build`), as systemd starts them. */
export const CLI_BIN = resolve(ROOT, "bin/qreplica.js");
export const AGENT_BIN = resolve(ROOT, "bin/qreplica-agent.js");

/**
 * The node flags the installed bins start with (their `#!/usr/bin/env -S node FLAGS` line): the
 * daemons the tests start get them too, so they run with the heap an installed site or agent has.
 */
export function binNodeFlags(bin = CLI_BIN): string[] {
  const first = readFileSync(bin, "utf8").split("\n", 1)[0] ?? "";
  const m = /^#!\/usr\/bin\/env\s+(?:-S\s+)?node(.*)$/.exec(first);
  if (!m) throw new Error(`${bin} does not start with '#!/usr/bin/env [-S] node ...'`);
  return m[1]!.split(" ").filter(Boolean);
}

/** dist/ exists: the bins can run. */
export function compiledBinsBuilt(): boolean {
  return existsSync(resolve(ROOT, "dist/src/cli/main.js")) && existsSync(resolve(ROOT, "dist/replica-agent/main.js"));
}

/** Runs the CLI to completion in its own process; returns exit code and output. */
export function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn(process.execPath, ["--import", "tsx", CLI, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("close", (code) => resolvePromise({ code: code ?? -1, stdout, stderr }));
  });
}

export interface Daemon {
  child: ChildProcess;
  exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * A long-running qreplica process (site server or agent) whose logs go to `logFile`: a TypeScript
 * source through tsx, or a bin (`CLI_BIN`, `AGENT_BIN`: the compiled code, as installed).
 */
export function startDaemon(script: string, args: string[], logFile: string, extraEnv: Record<string, string> = {}): Daemon {
  // 0600: the logs name images and identities (tests check that nothing is readable by others).
  const fd = openSync(logFile, "a", 0o600);
  // QR_NODE_ARGS passes flags such as --cpu-prof to the daemons (Node refuses them in NODE_OPTIONS).
  const nodeArgs = [...binNodeFlags(), ...(process.env.QR_NODE_ARGS ?? "").split(" ").filter(Boolean)];
  const loader = script.endsWith(".ts") ? ["--import", "tsx"] : [];
  const child = spawn(process.execPath, [...nodeArgs, ...loader, script, ...args], {
    cwd: ROOT,
    stdio: ["ignore", fd, fd],
    // TCG by default in tests: some CI hosts expose a software KVM that boots far slower.
    env: { ...process.env, QREPLICA_LOG_LEVEL: process.env.QREPLICA_LOG_LEVEL ?? "debug", QREPLICA_ACCEL: process.env.QREPLICA_ACCEL ?? "tcg", ...extraEnv },
  });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  return {
    child,
    exited,
    async kill(signal: NodeJS.Signals = "SIGKILL") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      // A process that ignores a gentle signal for long is killed for real.
      const force = setTimeout(() => child.kill("SIGKILL"), 8_000);
      await exited;
      clearTimeout(force);
    },
  };
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 60_000, intervalMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Runs the CLI with --json and parses its output; a non-zero exit throws with what it printed. */
export async function cliJson<T>(args: string[]): Promise<T> {
  const r = await runCli([...args, "--json"]);
  if (r.code !== 0) throw new Error(`qreplica ${args.join(" ")} failed (${r.code}): ${r.stdout}${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/**
 * Waits until a daemon's log holds `text`. The daemons log asynchronously (pino's SonicBoom): a
 * line logged before a site wrote its address file can reach the log after a test saw that file.
 */
export async function waitForLogLine(logFile: string, text: string, timeoutMs = 15_000): Promise<void> {
  await waitFor(`${logFile} to say '${text}'`, () => (existsSync(logFile) && readFileSync(logFile, "utf8").includes(text) ? true : undefined), timeoutMs);
}
