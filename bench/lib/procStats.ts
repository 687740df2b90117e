import { readFileSync } from "node:fs";

/** Clock ticks per second for /proc/<pid>/stat: 100 on every Linux this runs on (USER_HZ). */
const USER_HZ = 100;

/** VmHWM / VmRSS of a live process, in KiB. */
export function memoryKiB(pid: number): { hwm: number; rss: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status);
    if (!m) throw new Error(`/proc/${pid}/status has no ${name}`);
    return Number(m[1]);
  };
  return { hwm: field("VmHWM"), rss: field("VmRSS") };
}

/** User and system CPU seconds used so far by a live process (all its threads). */
export function cpuSeconds(pid: number): { user: number; system: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name, which is in parentheses and may contain spaces.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { user: Number(f[11]) / USER_HZ, system: Number(f[12]) / USER_HZ };
}

/**
 * Seconds the main thread spent waiting on a run queue (runnable, but another task had the CPU),
 * from /proc/<pid>/schedstat: how much a busy machine slowed the process's event loop down.
 */
export function runQueueWaitSeconds(pid: number): number {
  return Number(readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[1]) / 1e9;
}

interface Sample {
  user: number;
  system: number;
  wait: number;
}

/** CPU seconds (and run-queue waits) of several processes between two moments. */
export class CpuMeter {
  private readonly start = new Map<string, Sample>();

  constructor(private readonly pids: Record<string, number | undefined>) {
    for (const [name, pid] of Object.entries(pids)) if (pid) this.start.set(name, safeCpu(pid));
  }

  /** Total CPU seconds of all processes since construction. */
  total(): number {
    let sum = 0;
    for (const [name, pid] of Object.entries(this.pids)) {
      const a = this.start.get(name);
      if (!pid || !a) continue;
      const b = safeCpu(pid);
      sum += b.user - a.user + b.system - a.system;
    }
    return sum;
  }

  /** CPU seconds of one of the processes since construction (0 for one not known). */
  of(name: string): number {
    const pid = this.pids[name];
    const a = this.start.get(name);
    if (!pid || !a) return 0;
    const b = safeCpu(pid);
    return b.user - a.user + b.system - a.system;
  }

  /** "agent 9.1 s (user 8.0 + sys 1.1; …), ..." */
  report(): string {
    const parts: string[] = [];
    for (const [name, pid] of Object.entries(this.pids)) {
      const a = this.start.get(name);
      if (!pid || !a) continue;
      const b = safeCpu(pid);
      const user = b.user - a.user;
      const system = b.system - a.system;
      parts.push(`${name} ${(user + system).toFixed(1)} s (user ${user.toFixed(1)} + sys ${system.toFixed(1)}; ${(b.wait - a.wait).toFixed(1)} s main thread waiting for a CPU)`);
    }
    return parts.join(", ");
  }
}

function safeCpu(pid: number): Sample {
  try {
    return { ...cpuSeconds(pid), wait: runQueueWaitSeconds(pid) };
  } catch {
    return { user: 0, system: 0, wait: 0 };
  }
}
