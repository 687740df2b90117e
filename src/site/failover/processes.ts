import { readdirSync, readFileSync, type Dirent } from "node:fs";
import { join } from "node:path";

/** Whether `pid` runs (a zombie, dead but not yet reaped, does not). */
export function processAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 1) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // "pid (comm) S ...": the state follows the last ')' (comm may hold spaces and parentheses).
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** The process's argv joined with spaces, or undefined when it is gone. */
export function processCommandLine(pid: number): string | undefined {
  if (!processAlive(pid)) return undefined;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return undefined;
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function terminate(pid: number, graceMs: number): Promise<void> {
  const signal = (s: NodeJS.Signals) => {
    try {
      process.kill(pid, s);
    } catch {
      // already gone
    }
  };
  signal("SIGTERM");
  const deadline = Date.now() + graceMs;
  while (processAlive(pid)) {
    if (Date.now() > deadline) signal("SIGKILL");
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Kills every QEMU whose command line names `dir` (a launch cut short by a site kill leaves one
 * holding its overlays' locks) and waits until they are gone.
 */
export async function killQemuUnder(dir: string): Promise<number[]> {
  const pids = readdirSync("/proc")
    .filter((n) => /^\d+$/.test(n))
    .map(Number)
    .filter((pid) => {
      const cmd = processCommandLine(pid);
      return cmd !== undefined && cmd.includes("qemu-system") && cmd.includes(`${dir}/`);
    });
  await Promise.all(pids.map((pid) => terminate(pid, 5_000)));
  return pids;
}

/** QEMU and reverse-agent processes recorded in `qemu.pid` / `agent.pid` files under `dir` (test clean-up, test VMs of a site that is gone). */
export function killRecordedVms(dir: string): void {
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory()) {
      killRecordedVms(path);
    } else if (e.name === "qemu.pid" || e.name === "agent.pid") {
      try {
        process.kill(Number(readFileSync(path, "utf8")), "SIGKILL");
      } catch {
        // already gone
      }
    }
  }
}
