import { spawn } from "node:child_process";
import { open } from "node:fs/promises";
import net from "node:net";
import type { Probes } from "./target.js";

/** Serial logs grow for as long as the VM runs; a pattern is looked for in the last 16 MiB. */
const SERIAL_TAIL_BYTES = 16 * 1024 * 1024;
const HOOK_OUTPUT_TAIL = 4096;

export const localProbes: Probes = {
  tcpConnect(host, port, timeoutMs) {
    return new Promise((resolve) => {
      const socket = net.connect({ host, port });
      const done = (why: string | undefined) => {
        socket.destroy();
        resolve(why);
      };
      socket.setTimeout(timeoutMs, () => done(`no answer within ${timeoutMs} ms`));
      socket.once("connect", () => done(undefined));
      socket.once("error", (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
    });
  },
  async readSerialLog(path) {
    let fh;
    try {
      fh = await open(path, "r");
      const { size } = await fh.stat();
      const len = Math.min(size, SERIAL_TAIL_BYTES);
      const buf = Buffer.alloc(len);
      await fh.read(buf, 0, len, size - len);
      return buf.toString("latin1");
    } catch {
      return undefined;
    } finally {
      await fh?.close();
    }
  },
};

/** Resolves early when `signal` aborts, so Ctrl-C does not wait out a poll interval. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * Polls `check` until it returns true or the time is up. `check` returns true, or a short
 * description of why not yet, which becomes the timeout message.
 */
export async function waitUntil(
  check: () => Promise<true | string>,
  timeoutMs: number,
  pollMs: number,
  signal?: AbortSignal,
): Promise<{ ok: true; waitedMs: number } | { ok: false; lastReason: string }> {
  const started = Date.now();
  for (;;) {
    let reason: string;
    try {
      const r = await check();
      if (r === true) return { ok: true, waitedMs: Date.now() - started };
      reason = r;
    } catch (err) {
      // A site that is briefly unreachable is not a reason to give up before the timeout.
      reason = (err as Error).message;
    }
    const left = timeoutMs - (Date.now() - started);
    if (left <= 0 || signal?.aborted) return { ok: false, lastReason: reason };
    await sleep(Math.min(pollMs, left), signal);
  }
}

export interface HookOutcome {
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  outputTail: string;
  spawnError?: string;
}

/**
 * Runs a hook without a shell (arguments are passed as they are written). It gets its own process
 * group so that a timeout also ends whatever the script started, not only the script itself.
 */
export function runHook(command: string, args: string[], opts: { cwd: string; env: Record<string, string>; timeoutMs: number; signal?: AbortSignal }): Promise<HookOutcome> {
  return new Promise((resolve) => {
    let output = "";
    let timedOut = false;
    let settled = false;
    const child = spawn(command, args, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ["ignore", "pipe", "pipe"], detached: true });
    const collect = (d: Buffer) => (output = (output + d.toString("utf8")).slice(-HOOK_OUTPUT_TAIL));
    child.stdout.on("data", collect);
    child.stderr.on("data", collect);
    const killGroup = (sig: NodeJS.Signals) => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, sig);
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup("SIGTERM");
      setTimeout(() => killGroup("SIGKILL"), 5_000).unref();
    }, opts.timeoutMs);
    const onAbort = () => killGroup("SIGTERM");
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const finish = (o: Omit<HookOutcome, "outputTail" | "timedOut">) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
      resolve({ ...o, timedOut, outputTail: output });
    };
    child.once("error", (err) => finish({ exitCode: null, signal: null, spawnError: err.message }));
    // 'exit', not 'close': a grandchild still holding the pipes must not keep the run waiting.
    child.once("exit", (code, signal) => setTimeout(() => finish({ exitCode: code, signal }), 50));
  });
}
