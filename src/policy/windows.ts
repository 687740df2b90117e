import { Cron } from "croner";
import type { BandwidthLimit, TimeWindow } from "./types.js";

const minutes = (hhmm: string) => Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));

/**
 * Whether `at` (read in this host's local time) falls in the window. `to` before `from` wraps past
 * midnight, and the part after midnight belongs to the day the window started on
 * (mon 22:00-06:00 covers Tuesday 03:00). from == to: the whole day.
 */
export function inWindow(w: TimeWindow, at: Date): boolean {
  const now = at.getHours() * 60 + at.getMinutes();
  const from = minutes(w.from);
  const to = minutes(w.to);
  const day = at.getDay();
  const dayOk = (d: number) => !w.days || w.days.length === 0 || w.days.includes(d);
  if (from === to) return dayOk(day);
  if (from < to) return now >= from && now < to && dayOk(day);
  if (now >= from) return dayOk(day);
  return now < to && dayOk((day + 6) % 7);
}

/** Bytes per second allowed at `at`: the first entry whose window matches (0: unlimited, also when none does). */
export function bandwidthAt(limits: readonly BandwidthLimit[], at: Date): number {
  return limits.find((l) => !l.window || inWindow(l.window, at))?.bytesPerSecond ?? 0;
}

/** The cron pattern of the moments `w` opens: its `from` on each of its days (every day when none). */
export function openingPattern(w: TimeWindow): string {
  const days = w.days && w.days.length > 0 ? [...w.days].sort((a, b) => a - b).join(",") : "*";
  return `${minutes(w.from) % 60} ${Math.floor(minutes(w.from) / 60)} * * ${days}`;
}

/** When `w` next opens after `after` (this host's local time, as inWindow reads it), by croner. */
export function nextOpening(w: TimeWindow, after: Date): Date | undefined {
  return new Cron(openingPattern(w), { paused: true }).nextRun(after) ?? undefined;
}
