/**
 * The human units of the policy YAML: durations ("30s", "5m", "1h30m", "2d", "12w"), byte rates
 * ("50MiB/s", "unlimited"), days of the week and times of day. Parsing returns undefined on a
 * form it does not know, so the schema can name the field and the fix.
 */

const DURATION_UNITS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 };
const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/y;

/** Seconds in "1h30m" (units ms, s, m, h, d, w), or undefined. A bare number is seconds. */
export function parseDuration(text: string | number): number | undefined {
  if (typeof text === "number") return Number.isFinite(text) && text >= 0 ? text : undefined;
  const s = text.trim();
  if (s === "") return undefined;
  if (/^\d+(?:\.\d+)?$/.test(s)) return Number(s);
  let total = 0;
  DURATION_PART.lastIndex = 0;
  let at = 0;
  while (at < s.length) {
    DURATION_PART.lastIndex = at;
    const m = DURATION_PART.exec(s);
    if (!m) return undefined;
    total += Number(m[1]) * DURATION_UNITS[m[2]!]!;
    at = DURATION_PART.lastIndex;
  }
  // Round away float noise from "0.1s"-like input: durations are kept to the millisecond.
  return Math.round(total * 1000) / 1000;
}

/** The shortest exact form: 90 -> "1m30s", 7200 -> "2h", 1209600 -> "2w", 0.25 -> "250ms". */
export function formatDuration(seconds: number): string {
  if (seconds === 0) return "0s";
  let ms = Math.round(seconds * 1000);
  let out = "";
  for (const [unit, secs] of [
    ["w", 604_800],
    ["d", 86_400],
    ["h", 3600],
    ["m", 60],
    ["s", 1],
  ] as const) {
    const n = Math.floor(ms / (secs * 1000));
    if (n > 0) {
      out += `${n}${unit}`;
      ms -= n * secs * 1000;
    }
  }
  if (ms > 0) out += `${ms}ms`;
  return out;
}

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
};

/** Bytes per second in "50MiB/s", "100MB/s", "512KiB" (the "/s" is optional), or 0 for "unlimited". */
export function parseRate(text: string | number): number | undefined {
  if (typeof text === "number") return Number.isFinite(text) && text >= 0 ? Math.round(text) : undefined;
  const s = text.trim().toLowerCase();
  if (s === "unlimited" || s === "none") return 0;
  const m = /^(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib)?(?:\/s|ps)?$/.exec(s);
  if (!m) return undefined;
  return Math.round(Number(m[1]) * SIZE_UNITS[m[2] ?? "b"]!);
}

/** "50MiB/s" for 52428800; exact binary units where they divide, else bytes. */
export function formatRate(bytesPerSecond: number): string {
  if (bytesPerSecond === 0) return "unlimited";
  for (const [unit, n] of [
    ["GiB", 1024 ** 3],
    ["MiB", 1024 ** 2],
    ["KiB", 1024],
  ] as const) {
    if (bytesPerSecond % n === 0) return `${bytesPerSecond / n}${unit}/s`;
  }
  return `${bytesPerSecond}B/s`;
}

export const DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"] as const;
export type DayName = (typeof DAY_NAMES)[number];

/** 0 = Sunday ... 6 = Saturday, from "mon", "Monday", "MON". */
export function parseDay(text: string): number | undefined {
  const i = DAY_NAMES.indexOf(text.trim().toLowerCase().slice(0, 3) as DayName);
  const full = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"];
  const lower = text.trim().toLowerCase();
  return i >= 0 && (lower.length === 3 || full[i] === lower) ? i : undefined;
}

export const TIME_OF_DAY = /^([01]\d|2[0-3]):[0-5]\d$/;
