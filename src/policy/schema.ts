/**
 * The YAML form of a replication policy and its schema (zod): human units in, a
 * `ReplicationPolicy` (seconds, bytes, day numbers) out, or every problem at once, each naming
 * its field and the fix. Absent fields take the defaults that match what qreplica did before
 * policies existed (see DEFAULTS).
 */
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { ID_PATTERN } from "../model/index.js";
import { InvalidPolicyError, type PolicyProblem } from "./errors.js";
import type { BandwidthLimit, FrequencySpec, ReplicationPolicy, RetentionTier, TimeWindow, VerificationPolicy } from "./types.js";
import { TIME_OF_DAY, parseDay, parseDuration, parseRate } from "./units.js";
import { editDistance } from "../common/configSchema.js";

/** The built-in policy's name: VMs bound to no policy replicate under it. Not applicable by hand. */
export const DEFAULT_POLICY_NAME = "default";

/** What an absent field means; each is what qreplica did before policies existed, where it did something. */
export const DEFAULTS = {
  /** The agent config's `intervalSeconds` default. */
  frequencySeconds: 30,
  /** Continuous mode's floor between the end of one cycle and the start of the next. */
  minGapSeconds: 1,
  /** The site's `defaultMaxPoints` default (site init --max-points): the newest 24 points, no tiers. */
  minPoints: 24,
  /** With tiers: at least the newest point, whatever the tiers say. */
  minPointsWithTiers: 1,
  /** The agent config's `compressionLevel` default. */
  compressionLevel: 1,
  freezeTimeoutMs: 10_000,
  /** Hyper-V warns when no point arrived for over an hour: the RPO alert is at least that. */
  rpoAlertFloorSeconds: 3600,
  /** A drill boots the guest and waits for its checks: a few minutes covers a slow firmware and OS boot. */
  verificationTimeoutSeconds: 300,
  /** Without `window`: health warns after two drills in a row verified nothing (or did not run). */
  verificationWindowDrills: 2,
} as const;

const DURATION_FIX = "write e.g. 30s, 5m, 1h, 1d, 1w";
const MAX_FREEZE_MS = 60_000;

type Parsed<T> = { value: T } | { error: string };

/** A field parsed by `parse`, whose error message becomes the issue (the path is added by zod). */
function field<T>(parse: (v: unknown) => Parsed<T>) {
  return z.unknown().transform((v, ctx): T => {
    const r = parse(v);
    if ("error" in r) {
      ctx.addIssue({ code: "custom", message: r.error });
      return z.NEVER;
    }
    return r.value;
  });
}

const show = (v: unknown) => (typeof v === "string" ? JSON.stringify(v) : v === null ? "null" : typeof v === "object" ? "a mapping" : String(v));

const duration = (opts: { min?: number; what?: string } = {}) =>
  field<number>((v) => {
    const s = typeof v === "string" || typeof v === "number" ? parseDuration(v) : undefined;
    if (s === undefined) return { error: `${show(v)} is not a duration; ${DURATION_FIX}` };
    if (opts.min !== undefined && s < opts.min) return { error: `${show(v)} is shorter than ${opts.what ?? `${opts.min}s`}; ${DURATION_FIX}` };
    return { value: s };
  });

const timeOfDay = field<string>((v) =>
  typeof v === "string" && TIME_OF_DAY.test(v) ? { value: v } : { error: `${show(v)} is not a time of day; write "HH:MM" in 24-hour time, quoted, e.g. "08:00" or "18:30"` },
);

const DAY_SETS: Record<string, number[]> = { weekdays: [1, 2, 3, 4, 5], weekends: [0, 6], everyday: [] };

const days = field<number[]>((v) => {
  if (typeof v === "string" && DAY_SETS[v.toLowerCase()]) return { value: DAY_SETS[v.toLowerCase()]! };
  const list = Array.isArray(v) ? v : undefined;
  const parsed = list?.map((d) => (typeof d === "string" ? parseDay(d) : undefined));
  if (!parsed || parsed.some((d) => d === undefined)) {
    return { error: `${show(v)} is not a list of days; write e.g. [mon, tue, wed, thu, fri], or weekdays, weekends, everyday` };
  }
  return { value: [...new Set(parsed as number[])].sort((a, b) => a - b) };
});

const window = z.strictObject({ days: days.optional(), from: timeOfDay, to: timeOfDay });

const rate = field<number>((v) => {
  const r = typeof v === "string" || typeof v === "number" ? parseRate(v) : undefined;
  return r === undefined ? { error: `${show(v)} is not a rate; write e.g. 50MiB/s, 100MB/s, 512KiB/s or unlimited` } : { value: r };
});

const frequency = field<FrequencySpec | "continuous">((v) => {
  if (v === "continuous") return { value: "continuous" };
  const s = typeof v === "string" || typeof v === "number" ? parseDuration(v) : undefined;
  if (s === undefined) return { error: `${show(v)} is neither a duration nor "continuous"; ${DURATION_FIX} (at least 1s), or continuous` };
  if (s < 1) return { error: `${show(v)} is shorter than the 1s minimum; write 1s or more, or continuous` };
  return { value: { kind: "interval", seconds: s } };
});

const tierEvery = field<number>((v) => {
  if (v === "all" || v === 0) return { value: 0 };
  const s = typeof v === "string" || typeof v === "number" ? parseDuration(v) : undefined;
  return s === undefined || s <= 0 ? { error: `${show(v)} is not a duration; ${DURATION_FIX}, or all (every point)` } : { value: s };
});

const compressionLevel = field<number>((v) =>
  typeof v === "number" && Number.isInteger(v) && v >= 1 && v <= 19
    ? { value: v }
    : { error: `${show(v)} is not a zstd level; write a whole number from 1 (fastest) to 19 (smallest), e.g. 3` },
);

const minPoints = field<number>((v) =>
  typeof v === "number" && Number.isInteger(v) && v >= 1 && v <= 100_000 ? { value: v } : { error: `${show(v)} is not a point count; write a whole number of at least 1, e.g. 4` },
);

const name = field<string>((v) =>
  typeof v === "string" && ID_PATTERN.test(v)
    ? v === DEFAULT_POLICY_NAME
      ? { error: `"${DEFAULT_POLICY_NAME}" is the built-in policy of VMs bound to none; choose another name, e.g. gold` }
      : { value: v }
    : v === undefined
      ? { error: "is missing; every policy has a name, e.g. name: gold" }
      : { error: `${show(v)} is not a policy name; use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, e.g. gold` },
);

const initialReplication = z.union([
  z.literal("now"),
  z.strictObject({
    at: field<string>((v) => {
      const text = v instanceof Date ? v.toISOString() : v;
      return typeof text === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)$/.test(text) && !Number.isNaN(Date.parse(text))
        ? { value: new Date(text).toISOString() }
        : { error: `${show(v)} is not a date and time; write ISO 8601 with a zone, quoted, e.g. "2026-12-05T02:00:00Z"` };
    }),
  }),
]);

const resync = z.strictObject({
  mode: field<"automatic" | "manual">((v) => (v === "automatic" || v === "manual" ? { value: v } : { error: `${show(v)} is not a resync mode; write automatic or manual` })),
  window: window.optional(),
});

const serialPattern = field<string>((v) => {
  if (typeof v !== "string" || v === "") return { error: `${show(v)} is not a pattern; write a regular expression a serial-console line must match, quoted, e.g. "login:"` };
  try {
    new RegExp(v);
    return { value: v };
  } catch (err) {
    return { error: `${show(v)} is not a valid regular expression (${(err as Error).message}); escape special characters with \\` };
  }
});

const tcpPort = field<number>((v) =>
  typeof v === "number" && Number.isInteger(v) && v >= 1 && v <= 65_535 ? { value: v } : { error: `${show(v)} is not a TCP port; write a whole number from 1 to 65535, e.g. 22` },
);

const guestCommand = field<string[]>((v) => {
  if (typeof v === "string" && v.trim() !== "") return { value: ["/bin/sh", "-c", v] };
  if (Array.isArray(v) && v.length > 0 && v.every((a) => typeof a === "string") && (v[0] as string).startsWith("/")) return { value: v as string[] };
  return {
    error: `${show(v)} is not a command; write a shell command line ("systemctl is-active nginx", run by /bin/sh -c) or a list whose first entry is a program's absolute path, e.g. [/usr/bin/true]`,
  };
});

const verification = z.strictObject({
  every: duration({ min: 60, what: "1m" }),
  window: duration({ min: 60, what: "1m" }).optional(),
  timeout: duration({ min: 10, what: "10s" }).optional(),
  checks: z.strictObject({ serialPattern: serialPattern.optional(), guestAgent: z.boolean().optional(), tcpPort: tcpPort.optional(), guestCommand: guestCommand.optional() }),
});

/** The YAML form, as written by people (see README "Policies"). */
export const policySpecSchema = z.strictObject({
  name,
  description: z.string().optional(),
  frequency: frequency.optional(),
  minGap: duration({ min: 0 }).optional(),
  retention: z
    .strictObject({
      minPoints: minPoints.optional(),
      tiers: z.array(z.strictObject({ every: tierEvery, keepFor: duration({ min: 1, what: "1s" }) })).optional(),
      lockFor: duration({ min: 1, what: "1s" }).optional(),
    })
    .optional(),
  applicationConsistent: z.strictObject({ every: duration({ min: 60, what: "1m" }), freezeTimeout: duration({ min: 0.001, what: "1ms" }).optional() }).optional(),
  compressionLevel: compressionLevel.optional(),
  bandwidth: z.array(z.strictObject({ limit: rate, window: window.optional() })).optional(),
  initialReplication: initialReplication.optional(),
  resync: resync.optional(),
  rpoAlert: duration({ min: 1, what: "1s" }).optional(),
  verification: verification.optional(),
});

type Spec = z.output<typeof policySpecSchema>;

/** Rules across fields: each problem names the field to change. */
function crossFieldProblems(s: Spec, policy: ReplicationPolicy): PolicyProblem[] {
  const problems: PolicyProblem[] = [];
  const tiers = s.retention?.tiers ?? [];
  tiers.forEach((t, i) => {
    if (t.every > 0 && t.every >= t.keepFor)
      problems.push({
        path: `retention.tiers[${i}].keepFor`,
        message: `must be longer than the tier's 'every' (one point per ${s.retention!.tiers![i]!.every}s kept for less than that keeps nothing); raise keepFor or lower every`,
      });
    const prev = tiers[i - 1];
    if (prev && t.every <= prev.every)
      problems.push({ path: `retention.tiers[${i}].every`, message: `tiers go finest first: this tier's 'every' must be coarser than tier ${i - 1}'s; reorder the tiers` });
  });
  if (s.resync?.mode === "manual" && s.resync.window)
    problems.push({ path: "resync.window", message: "a manual resync starts when an operator says so, not in a window; remove the window or write mode: automatic" });
  if (s.minGap !== undefined && s.frequency !== "continuous")
    problems.push({ path: "minGap", message: "applies to frequency: continuous only; remove it or set frequency: continuous" });
  const f = policy.frequency;
  if (s.rpoAlert !== undefined && f.kind === "interval" && policy.rpoAlertSeconds <= f.seconds) {
    problems.push({
      path: "rpoAlert",
      message: `must be longer than the frequency (${f.seconds}s): a point every ${f.seconds}s is always older than that; raise rpoAlert, e.g. to ${Math.max(2 * f.seconds, 60)}s`,
    });
  }
  const ac = policy.applicationConsistent;
  if (ac && ac.freezeTimeoutMs > MAX_FREEZE_MS)
    problems.push({ path: "applicationConsistent.freezeTimeout", message: `at most ${MAX_FREEZE_MS / 1000}s: a guest frozen longer times out its own I/O; write e.g. 10s` });
  problems.push(...verificationProblems(policy.verification));
  if (s.verification?.checks.guestAgent === false && s.verification.checks.guestCommand !== undefined)
    problems.push({ path: "verification.checks.guestAgent", message: "guestCommand runs through qemu-guest-agent; remove 'guestAgent: false' or the guestCommand" });
  if (policy.bandwidth.some((b, i) => b.window === undefined && i < policy.bandwidth.length - 1)) {
    const i = policy.bandwidth.findIndex((b) => b.window === undefined);
    problems.push({ path: `bandwidth[${i}].window`, message: "an entry without a window applies always, so the entries after it never do; give it a window or move it last" });
  }
  return problems;
}

function verificationProblems(v: VerificationPolicy | undefined): PolicyProblem[] {
  if (!v) return [];
  const problems: PolicyProblem[] = [];
  const c = v.checks;
  if (c.serialPattern === undefined && !c.guestAgent && c.tcpPort === undefined && c.guestCommand === undefined)
    problems.push({ path: "verification.checks", message: "names no check; a VM that merely runs proves little: add serialPattern, guestAgent, tcpPort or guestCommand" });
  if (v.timeoutSeconds >= v.everySeconds)
    problems.push({
      path: "verification.timeout",
      message: `must be shorter than 'every' (${v.everySeconds}s): a drill holds its point against retention merges while it runs; lower timeout or raise every`,
    });
  if (v.windowSeconds < v.everySeconds)
    problems.push({
      path: "verification.window",
      message: `must be at least 'every' (${v.everySeconds}s), or health warns between two successful drills; raise window, e.g. to ${2 * v.everySeconds}s`,
    });
  return problems;
}

function toVerification(v: NonNullable<Spec["verification"]>): VerificationPolicy {
  const c = v.checks;
  return {
    everySeconds: v.every,
    windowSeconds: v.window ?? DEFAULTS.verificationWindowDrills * v.every,
    timeoutSeconds: v.timeout ?? Math.min(DEFAULTS.verificationTimeoutSeconds, Math.max(10, v.every / 2)),
    checks: {
      ...(c.serialPattern !== undefined ? { serialPattern: c.serialPattern } : {}),
      // A guest command runs through the agent: the agent is checked first.
      ...(c.guestAgent || c.guestCommand !== undefined ? { guestAgent: true } : {}),
      ...(c.tcpPort !== undefined ? { tcpPort: c.tcpPort } : {}),
      ...(c.guestCommand !== undefined ? { guestCommand: c.guestCommand } : {}),
    },
  };
}

function toPolicy(s: Spec): ReplicationPolicy {
  const f = s.frequency;
  const frequency: FrequencySpec =
    f === undefined ? { kind: "interval", seconds: DEFAULTS.frequencySeconds } : f === "continuous" ? { kind: "continuous", minGapSeconds: s.minGap ?? DEFAULTS.minGapSeconds } : f;
  const tiers: RetentionTier[] = (s.retention?.tiers ?? []).map((t) => ({ everySeconds: t.every, keepForSeconds: t.keepFor }));
  const nominal = frequency.kind === "interval" ? frequency.seconds : frequency.minGapSeconds;
  const win = (w: { days?: number[]; from: string; to: string } | undefined): TimeWindow | undefined =>
    w && { ...(w.days && w.days.length ? { days: w.days } : {}), from: w.from, to: w.to };
  const bandwidth: BandwidthLimit[] = (s.bandwidth ?? []).map((b) => ({ bytesPerSecond: b.limit, ...(b.window ? { window: win(b.window) } : {}) }));
  const policy: ReplicationPolicy = {
    name: s.name,
    ...(s.description ? { description: s.description } : {}),
    frequency,
    retention: {
      tiers,
      minPoints: s.retention?.minPoints ?? (tiers.length ? DEFAULTS.minPointsWithTiers : DEFAULTS.minPoints),
      ...(s.retention?.lockFor !== undefined ? { lockSeconds: s.retention.lockFor } : {}),
    },
    ...(s.applicationConsistent
      ? {
          applicationConsistent: {
            everySeconds: s.applicationConsistent.every,
            freezeTimeoutMs: Math.round((s.applicationConsistent.freezeTimeout ?? DEFAULTS.freezeTimeoutMs / 1000) * 1000),
          },
        }
      : {}),
    compressionLevel: s.compressionLevel ?? DEFAULTS.compressionLevel,
    bandwidth,
    initialReplication: s.initialReplication === undefined || s.initialReplication === "now" ? { kind: "now" } : { kind: "at", at: s.initialReplication.at },
    resync:
      s.resync === undefined
        ? { mode: "automatic" }
        : s.resync.mode === "manual"
          ? { mode: "manual" }
          : { mode: "automatic", ...(s.resync.window ? { window: win(s.resync.window) } : {}) },
    rpoAlertSeconds: s.rpoAlert ?? defaultRpoAlertSeconds(nominal),
    ...(s.verification ? { verification: toVerification(s.verification) } : {}),
  };
  return policy;
}

/** At least Hyper-V's hour, and room for a few missed cycles of a slow frequency. */
export function defaultRpoAlertSeconds(frequencySeconds: number): number {
  return Math.max(DEFAULTS.rpoAlertFloorSeconds, 4 * frequencySeconds);
}

const FIELDS = Object.keys(policySpecSchema.shape).join(", ");

/** zod's issues as the operator reads them: the field's path and the fix. */
function problemsOf(error: z.ZodError): PolicyProblem[] {
  return error.issues.flatMap((iss): PolicyProblem[] => {
    const path = pathText(iss.path);
    if (iss.code === "unrecognized_keys") {
      const known = knownFields(iss.path);
      return iss.keys.map((k) => {
        const near = known.find((f) => editDistance(f.toLowerCase(), k.toLowerCase()) <= 2);
        return { path: pathText([...iss.path, k]), message: `unknown field${near ? `: did you mean '${near}'?` : ""}; the fields here are ${known.join(", ")}` };
      });
    }
    if (iss.code === "invalid_type" && iss.input === undefined) return [{ path, message: "is missing" }];
    if (path === "initialReplication" && (iss.code === "invalid_union" || iss.code === "invalid_value")) return [{ path, message: `write now, or { at: "2026-12-05T02:00:00Z" }` }];
    if (iss.code === "invalid_type")
      return [{ path, message: `is ${show(iss.input)}; expected ${iss.expected === "object" ? "a mapping" : iss.expected === "array" ? "a list" : `a ${iss.expected}`}` }];
    return [{ path, message: iss.message }];
  });
}

/** The fields a mapping at `path` may have, for "did you mean". */
function knownFields(path: PropertyKey[]): string[] {
  const keys = path.filter((p) => typeof p === "string").join(".");
  const byPath: Record<string, string[]> = {
    "": Object.keys(policySpecSchema.shape),
    retention: ["minPoints", "tiers", "lockFor"],
    "retention.tiers": ["every", "keepFor"],
    applicationConsistent: ["every", "freezeTimeout"],
    bandwidth: ["limit", "window"],
    resync: ["mode", "window"],
    initialReplication: ["at"],
    verification: ["every", "window", "timeout", "checks"],
    "verification.checks": ["serialPattern", "guestAgent", "tcpPort", "guestCommand"],
  };
  return byPath[keys] ?? (keys.endsWith("window") ? ["days", "from", "to"] : []);
}

function pathText(path: PropertyKey[]): string {
  return path.reduce<string>((out, p) => (typeof p === "number" ? `${out}[${p}]` : out ? `${out}.${String(p)}` : String(p)), "");
}

/** A parsed YAML (or JSON) document into a policy, or InvalidPolicyError listing every problem. */
export function policyFromSpec(doc: unknown, source?: string): ReplicationPolicy {
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    throw new InvalidPolicyError([{ path: "", message: `a policy is a mapping of fields (${FIELDS}); start with 'name: gold'` }], source);
  }
  const r = policySpecSchema.safeParse(doc, { reportInput: true });
  if (!r.success) throw new InvalidPolicyError(problemsOf(r.error), source);
  const policy = toPolicy(r.data);
  const problems = crossFieldProblems(r.data, policy);
  if (problems.length) throw new InvalidPolicyError(problems, source);
  return policy;
}

/** The text of a policy file into a policy. */
export function parsePolicyYaml(text: string, source?: string): ReplicationPolicy {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new InvalidPolicyError([{ path: "", message: `not valid YAML: ${(err as Error).message.split("\n")[0]}` }], source);
  }
  return policyFromSpec(doc, source);
}
