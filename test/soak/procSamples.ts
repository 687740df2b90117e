import { readdirSync, readFileSync } from "node:fs";

/** One look at a process: resident memory and open file descriptors. */
export interface ProcSample {
  at: number;
  rssKiB: number;
  fds: number;
}

/** RSS and fd count of a live process; undefined once it is gone. */
export function sampleProcess(pid: number, at = Date.now()): ProcSample | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
    return { at, rssKiB: m ? Number(m[1]) : 0, fds: readdirSync(`/proc/${pid}/fd`).length };
  } catch {
    return undefined;
  }
}

/** Least-squares slope of y over x (per unit of x); 0 with fewer than two points. */
export function slope(points: Array<{ x: number; y: number }>): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((s, p) => s + p.x, 0) / n;
  const my = points.reduce((s, p) => s + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.x - mx) * (p.y - my);
    den += (p.x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

/** Per process: RSS (MiB) and fds at the start and end of the samples, and their slopes per minute. */
export interface Trend {
  name: string;
  samples: number;
  rssMiB: { first: number; last: number; max: number; slopePerMin: number };
  fds: { first: number; last: number; max: number; slopePerMin: number };
}

export function trendOf(name: string, samples: ProcSample[]): Trend {
  const min = (s: ProcSample) => s.at / 60_000;
  const rss = samples.map((s) => ({ x: min(s), y: s.rssKiB / 1024 }));
  const fds = samples.map((s) => ({ x: min(s), y: s.fds }));
  return {
    name,
    samples: samples.length,
    rssMiB: { first: rss[0]?.y ?? 0, last: rss.at(-1)?.y ?? 0, max: Math.max(0, ...rss.map((p) => p.y)), slopePerMin: slope(rss) },
    fds: { first: fds[0]?.y ?? 0, last: fds.at(-1)?.y ?? 0, max: Math.max(0, ...fds.map((p) => p.y)), slopePerMin: slope(fds) },
  };
}

export function formatTrend(t: Trend): string {
  const f = (n: number) => n.toFixed(1);
  return (
    `${t.name.padEnd(28)} ${String(t.samples).padStart(4)} samples  RSS ${f(t.rssMiB.first)} -> ${f(t.rssMiB.last)} MiB (max ${f(t.rssMiB.max)}, slope ${t.rssMiB.slopePerMin >= 0 ? "+" : ""}${t.rssMiB.slopePerMin.toFixed(2)} MiB/min)  ` +
    `fds ${t.fds.first} -> ${t.fds.last} (max ${t.fds.max}, slope ${t.fds.slopePerMin >= 0 ? "+" : ""}${t.fds.slopePerMin.toFixed(2)}/min)`
  );
}

/** Samples of several named processes over time; a process that is gone (or not yet there) is skipped. */
export class ProcessSampler {
  private readonly samples = new Map<string, ProcSample[]>();

  take(name: string, pid: number | undefined): void {
    const s = pid ? sampleProcess(pid) : undefined;
    if (s) this.samples.set(name, [...(this.samples.get(name) ?? []), s]);
  }

  /** Each process's trend over its samples from `from` on (all of them for those in `whole`). */
  trends(from: number, whole: (name: string) => boolean = () => false): Trend[] {
    return [...this.samples.entries()].map(([name, s]) =>
      trendOf(
        name,
        s.filter((x) => x.at >= from || whole(name)),
      ),
    );
  }
}
