import cliProgress from "cli-progress";
import { formatBytes } from "./table.js";

/**
 * Progress of long commands, always on stderr (stdout stays the command's result, one JSON
 * document with --json): a bar per VM on a terminal (cli-progress), one JSON object per line
 * otherwise, so logs and scripts can follow it.
 */
export type ProgressMode = "auto" | "bar" | "lines" | "none";

export const PROGRESS_MODES: readonly ProgressMode[] = ["auto", "bar", "lines", "none"];

/** A cycle's progress as the site reports it. */
export interface CycleSample {
  vm: string;
  kind: string;
  cycleSequence: number;
  bytesDone: number;
  /** 0: unknown. */
  bytesTotal: number;
}

export interface ProgressReporter {
  cycle(s: CycleSample): void;
  /** The cycle committed as a recovery point. */
  committed(s: CycleSample & { recoveryPointId: string; seconds: number }): void;
  /** The cycle ended without a point (refused, aborted, the agent gone): it is retried. */
  cycleEnded(s: CycleSample & { message: string }): void;
  /** A step or a wait that has no byte count: "asking the primary to stop the VM". */
  phase(vm: string, message: string): void;
  stop(): void;
}

/** Bytes per second over the last few seconds of samples, and the ETA it gives. */
class RateMeter {
  private samples: Array<{ at: number; bytes: number }> = [];
  constructor(private readonly windowMs = 10_000) {}
  add(bytes: number, at = Date.now()): { bytesPerSecond: number; etaSeconds: (total: number) => number | null } {
    const last = this.samples.at(-1);
    if (last && bytes < last.bytes) this.samples = [];
    this.samples.push({ at, bytes });
    while (this.samples.length > 2 && at - this.samples[0]!.at > this.windowMs) this.samples.shift();
    const first = this.samples[0]!;
    const seconds = (at - first.at) / 1000;
    const bytesPerSecond = seconds > 0 ? (bytes - first.bytes) / seconds : 0;
    return { bytesPerSecond, etaSeconds: (total) => (total > 0 && bytesPerSecond > 0 ? Math.max(0, (total - bytes) / bytesPerSecond) : null) };
  }
}

export function resolveMode(mode: ProgressMode, stream: NodeJS.WriteStream = process.stderr): Exclude<ProgressMode, "auto"> {
  if (mode !== "auto") return mode;
  return stream.isTTY ? "bar" : "lines";
}

export function progressReporter(mode: ProgressMode, stream: NodeJS.WriteStream = process.stderr): ProgressReporter {
  const resolved = resolveMode(mode, stream);
  if (resolved === "none") return { cycle() {}, committed() {}, cycleEnded() {}, phase() {}, stop() {} };
  return resolved === "bar" ? new BarReporter(stream) : new LineReporter(stream);
}

const meterKey = (s: CycleSample) => `${s.vm}#${s.cycleSequence}`;

class LineReporter implements ProgressReporter {
  private readonly meters = new Map<string, RateMeter>();
  constructor(private readonly out: NodeJS.WritableStream) {}
  private line(o: Record<string, unknown>): void {
    this.out.write(`${JSON.stringify({ time: new Date().toISOString(), ...o })}\n`);
  }
  cycle(s: CycleSample): void {
    const meter = this.meters.get(meterKey(s)) ?? new RateMeter();
    this.meters.set(meterKey(s), meter);
    const r = meter.add(s.bytesDone);
    const eta = r.etaSeconds(s.bytesTotal);
    this.line({ event: "progress", ...s, bytesPerSecond: Math.round(r.bytesPerSecond), etaSeconds: eta === null ? null : Math.round(eta) });
  }
  committed(s: CycleSample & { recoveryPointId: string; seconds: number }): void {
    this.meters.delete(meterKey(s));
    this.line({ event: "committed", ...s });
  }
  cycleEnded(s: CycleSample & { message: string }): void {
    this.meters.delete(meterKey(s));
    this.line({ event: "cycle-ended", ...s });
  }
  phase(vm: string, message: string): void {
    this.line({ event: "phase", vm, message });
  }
  stop(): void {}
}

// Own tokens only: cli-progress fills {total}, {eta} and {value} itself (raw numbers).
const FORMAT = "{vm} {label} |{bar}| {percent} {doneH}/{totalH} {rateH} ETA {etaH}";

function duration(s: number | null): string {
  if (s === null) return "-";
  const t = Math.round(s);
  return t < 60
    ? `${t}s`
    : t < 3600
      ? `${Math.floor(t / 60)}m${String(t % 60).padStart(2, "0")}s`
      : `${Math.floor(t / 3600)}h${String(Math.floor((t % 3600) / 60)).padStart(2, "0")}m`;
}

class BarReporter implements ProgressReporter {
  private readonly multi: cliProgress.MultiBar;
  private readonly bars = new Map<string, { bar: cliProgress.SingleBar; meter: RateMeter; seq: number }>();
  private stopped = false;

  constructor(private readonly stream: NodeJS.WriteStream) {
    this.multi = new cliProgress.MultiBar(
      { stream, format: FORMAT, hideCursor: true, clearOnComplete: false, stopOnComplete: false, barsize: 20, fps: 5, autopadding: true },
      cliProgress.Presets.shades_classic,
    );
  }

  private payload(s: CycleSample, meter: RateMeter, label: string) {
    const r = meter.add(s.bytesDone);
    const total = s.bytesTotal > 0 ? s.bytesTotal : s.bytesDone;
    return {
      vm: s.vm,
      label,
      percent: s.bytesTotal > 0 ? `${Math.floor((100 * s.bytesDone) / s.bytesTotal)}%` : "?%",
      doneH: formatBytes(s.bytesDone),
      totalH: s.bytesTotal > 0 ? formatBytes(total) : "?",
      rateH: `${formatBytes(Math.round(r.bytesPerSecond))}/s`,
      etaH: duration(r.etaSeconds(s.bytesTotal)),
    };
  }

  cycle(s: CycleSample): void {
    if (this.stopped) return;
    let entry = this.bars.get(s.vm);
    const label = `${s.kind} #${s.cycleSequence}`;
    if (!entry || entry.seq !== s.cycleSequence) {
      const meter = new RateMeter();
      const total = Math.max(1, s.bytesTotal || s.bytesDone);
      if (entry) entry.bar.setTotal(total);
      const bar = entry?.bar ?? this.multi.create(total, 0, this.payload(s, meter, label));
      entry = { bar, meter, seq: s.cycleSequence };
      this.bars.set(s.vm, entry);
    }
    entry.bar.setTotal(Math.max(1, s.bytesTotal || s.bytesDone));
    entry.bar.update(s.bytesDone, this.payload(s, entry.meter, label));
  }

  committed(s: CycleSample & { recoveryPointId: string; seconds: number }): void {
    if (this.stopped) return;
    const entry = this.bars.get(s.vm);
    const total = Math.max(1, s.bytesTotal || s.bytesDone);
    const label = `${s.kind} #${s.cycleSequence} committed`;
    if (entry) {
      entry.bar.setTotal(total);
      entry.bar.update(total, { ...this.payload({ ...s, bytesDone: total }, entry.meter, label), etaH: `done in ${duration(s.seconds)}` });
    } else this.log(`${s.vm}: ${label} (${formatBytes(total)}, point ${s.recoveryPointId})`);
  }

  cycleEnded(s: CycleSample & { message: string }): void {
    if (this.stopped) return;
    this.log(`${s.vm}: ${s.kind} cycle ${s.cycleSequence} ended without a point: ${s.message}`);
  }

  phase(vm: string, message: string): void {
    if (this.stopped) return;
    this.log(`${vm}: ${message}`);
  }

  /** Above the bars while there are any (MultiBar prints its log at its next redraw, and redraws only with a bar), else at once. */
  private log(line: string): void {
    if (this.bars.size > 0) this.multi.log(`${line}\n`);
    else this.stream.write(`${line}\n`);
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    // With no bar drawn the terminal was never touched (cursor, line wrapping): nothing to restore.
    if (this.bars.size > 0) this.multi.stop();
  }
}
