import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { QemuToolError } from "./errors.js";

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const STDERR_TAIL_BYTES = 8192;

/** A running QEMU process (qemu-storage-daemon or qemu-system-*) owned by this Node process. */
export class QemuProcess {
  readonly exited: Promise<ProcessExit>;
  private stderrTail = "";
  private exitInfo: ProcessExit | undefined;

  constructor(
    readonly tool: string,
    readonly args: readonly string[],
    readonly child: ChildProcess,
  ) {
    child.stderr?.on("data", (c: Buffer) => {
      this.stderrTail = (this.stderrTail + c.toString("utf8")).slice(-STDERR_TAIL_BYTES);
    });
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  get stderr(): string {
    return this.stderrTail;
  }

  /** Sends a signal and waits for the exit (SIGKILL is how fault tests crash QEMU for real). */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<ProcessExit> {
    if (this.running) this.child.kill(signal);
    return this.exited;
  }

  /** SIGTERM (QEMU closes images and writes persistent bitmaps), then SIGKILL after a grace period. */
  async stop(graceMs = 10_000): Promise<ProcessExit> {
    if (!this.running) return this.exited;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }
}

export interface SpawnQemuOptions {
  /**
   * The kernel SIGKILLs the process when this Node process dies, kill -9 included
   * (PR_SET_PDEATHSIG, set by util-linux `setpriv --pdeathsig` just before it execs QEMU; the
   * setting survives that exec). For processes that must never outlive their owner, such as a
   * site's storage daemon, which holds the image locks of every replica chain.
   */
  dieWithParent?: boolean;
  /**
   * Its own session and process group (setsid): signals meant for its owner's group, such as a
   * Ctrl-C in the owner's terminal, do not reach it. For processes that must outlive their owner.
   */
  ownSession?: boolean;
}

const SETPRIV = "/usr/bin/setpriv";

/** Spawns a QEMU binary and waits until every path in `readyPaths` (its sockets) exists. */
export async function spawnQemu(tool: string, args: readonly string[], readyPaths: readonly string[], timeoutMs = 30_000, options: SpawnQemuOptions = {}): Promise<QemuProcess> {
  // A socket left by a killed process would look ready before the new one listens.
  for (const p of readyPaths) rmSync(p, { force: true });
  if (options.dieWithParent && !existsSync(SETPRIV)) {
    throw new QemuToolError(tool, args, `${SETPRIV} is missing: install util-linux (it makes ${tool} die with its owner)`);
  }
  // setpriv execs the tool in place, so the pid is QEMU's own.
  const spawnOptions = { stdio: ["ignore", "ignore", "pipe"] as ["ignore", "ignore", "pipe"], detached: options.ownSession === true };
  const child = options.dieWithParent ? spawn(SETPRIV, ["--pdeathsig", "SIGKILL", "--", tool, ...args], spawnOptions) : spawn(tool, args, spawnOptions);
  const proc = new QemuProcess(tool, args, child);
  const spawnError = new Promise<Error>((resolve) =>
    child.once("error", (e: NodeJS.ErrnoException) => resolve(new QemuToolError(tool, args, e.code === "ENOENT" ? "not installed" : e.message, { cause: e }))),
  );
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (readyPaths.every((p) => existsSync(p))) return proc;
    const failed = await Promise.race([spawnError, proc.exited, sleep(20).then(() => undefined)]);
    if (failed instanceof Error) throw failed;
    if (failed !== undefined) {
      throw new QemuToolError(tool, args, `exited (${failed.code ?? failed.signal}) before it was ready: ${proc.stderr.trim()}`);
    }
    if (Date.now() > deadline) {
      await proc.kill();
      throw new QemuToolError(tool, args, `not ready within ${timeoutMs} ms (waiting for ${readyPaths.join(", ")}): ${proc.stderr.trim()}`);
    }
  }
}
