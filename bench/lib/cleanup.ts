import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { makeTmpDir } from "../../src/common/tmpDir.js";

const active = new Set<Cleanup>();
let onSignal: ((signal: NodeJS.Signals) => void) | undefined;

/**
 * Ctrl-C or a kill mid-benchmark still removes what the active cleanups know about, newest first.
 * `on`, not `once`: `npm run` goes through the tsx CLI, which relays the terminal's SIGINT to this
 * process a second time, and a default handler then would end it halfway through the cleanup.
 */
function watchSignals(): void {
  if (onSignal) return;
  let exiting = false;
  onSignal = (signal) => {
    if (exiting) return;
    exiting = true;
    void (async () => {
      for (const c of [...active].reverse()) await c.runAll();
      process.exit(signal === "SIGINT" ? 130 : 143);
    })();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}

/**
 * Undo actions run in reverse order whatever happens, each one even if an earlier one failed:
 * a failed step must not leave processes, storage daemons or multi-GiB images behind.
 */
export class Cleanup {
  private readonly actions: Array<{ what: string; run: () => unknown }> = [];

  constructor(private readonly log: (m: string) => void) {
    active.add(this);
    watchSignals();
  }

  defer(what: string, run: () => unknown): void {
    this.actions.push({ what, run });
  }

  async runAll(): Promise<void> {
    active.delete(this);
    while (this.actions.length > 0) {
      const a = this.actions.pop()!;
      try {
        await a.run();
      } catch (err) {
        this.log(`cleanup: ${a.what} failed: ${(err as Error).message}`);
      }
    }
  }
}

/** Kills (SIGKILL, by pid) every qemu-storage-daemon whose command line mentions `dir`: orphans of our runs. */
export async function killStorageDaemonsUnder(dir: string, log: (m: string) => void): Promise<void> {
  const victims: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8");
      if (cmdline.startsWith("qemu-storage-daemon") || cmdline.includes("/qemu-storage-daemon\0")) {
        if (cmdline.includes(dir)) victims.push(Number(entry));
      }
    } catch {
      // gone meanwhile
    }
  }
  for (const pid of victims) {
    log(`cleanup: killing orphaned qemu-storage-daemon ${pid}`);
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone meanwhile
    }
  }
  for (const pid of victims) {
    for (let i = 0; i < 100; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        break;
      }
      await sleep(20);
    }
  }
}

/** A shell pipeline in its own process group, so that every stage can be ended at once. */
export interface Pipeline {
  child: ChildProcess;
  /** Resolves with the exit code, the CPU seconds of the stages (bash `times`) and the stderr tail. */
  exited: Promise<{ code: number | null; stderr: string; at: bigint; cpuSeconds: number | undefined }>;
  kill(): Promise<void>;
}

export function startPipeline(script: string): Pipeline {
  // `times` reports the user and system CPU of the shell's waited-for children: the stages.
  const child = spawn("bash", ["-c", `set -o pipefail; ${script}; rc=$?; times >&2; exit $rc`], { stdio: ["ignore", "ignore", "pipe"], detached: true });
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8192)));
  const exited = new Promise<{ code: number | null; stderr: string; at: bigint; cpuSeconds: number | undefined }>((resolve) => {
    child.once("close", (code) => {
      const at = process.hrtime.bigint();
      const lines = stderr.trimEnd().split("\n");
      const m = /^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/.exec(lines[lines.length - 1] ?? "");
      const cpuSeconds = m ? Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4]) : undefined;
      if (m) stderr = lines.slice(0, -2).join("\n");
      resolve({ code, stderr, at, cpuSeconds });
    });
  });
  return {
    child,
    exited,
    async kill() {
      // The group, even if bash itself has exited: a stage may outlive it.
      if (!child.pid) return;
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        // the whole group is gone
      }
      await exited;
    },
  };
}

/**
 * A benchmark's scratch directory with its cleanup: removed afterwards (kept with QR_KEEP=1), and
 * any storage daemon still running under it killed first.
 */
export function benchScratch(prefix: string, log: (m: string) => void): { dir: string; cleanup: Cleanup } {
  const tmp = makeTmpDir(prefix);
  const cleanup = new Cleanup(log);
  cleanup.defer(`remove ${tmp.path}`, () => (process.env.QR_KEEP ? log(`kept ${tmp.path} (QR_KEEP)`) : tmp.cleanup()));
  cleanup.defer("kill orphaned storage daemons", () => killStorageDaemonsUnder(tmp.path, log));
  return { dir: tmp.path, cleanup };
}
