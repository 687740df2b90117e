import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { DelayLine, LinkShape } from "./delayLine.js";

const MAIN = fileURLToPath(new URL("./delayLineMain.ts", import.meta.url));

/**
 * startDelayLine in a process of its own. In the benchmark's event loop the line competes with
 * the benchmark's polling and logging, and on a loaded machine it is one more thing the
 * measured processes wait behind; a real link costs the hosts no CPU at all. Its own process
 * gets its own share of the CPU (and, with `priority`, a nicer one than ours: the line stands in
 * for hardware, not for anything the product runs). Resolves once it listens.
 */
export async function startDelayLineProcess(target: string, shape: LinkShape, opts: { priority?: number } = {}): Promise<DelayLine & { pid: number }> {
  const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", MAIN, target, String(shape.rttMs), String(shape.bitsPerSecond)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const pid = child.pid!;
  if (opts.priority !== undefined) {
    try {
      (await import("node:os")).setPriority(pid, opts.priority);
    } catch {
      // Raising priority needs privileges; without them the line runs at ours.
    }
  }
  const address = await new Promise<string>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.once("line", (l) => resolve(l.trim()));
    child.once("exit", (code, signal) => reject(new Error(`the delay line process exited (${code ?? signal}) before it listened`)));
    child.once("error", reject);
  });
  return {
    address,
    pid,
    close: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once("exit", () => resolve());
        child.kill("SIGTERM");
      }),
  };
}
