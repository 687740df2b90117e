/**
 * The budget every fuzzer of test/fuzz runs under. The CI form (`npm test`) is seeded at random
 * and bounded to a few seconds per property; the long form (`npm run test:fuzz`) sets
 * QR_FUZZ_SECONDS. A failure prints the seed and the path fast-check needs to replay it:
 *   QR_FUZZ_SEED=<seed> npx vitest run test/fuzz/<file>
 * Environment:
 *   QR_FUZZ_SEED     replay this seed (an integer) instead of a random one
 *   QR_FUZZ_RUNS     runs per property (default: each property's own CI count, or unbounded in the long form)
 *   QR_FUZZ_SECONDS  time budget per property (default: each property's own CI budget)
 */
import fc from "fast-check";

function envInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === "") return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new Error(`${name}=${v} is not an integer`);
  return n;
}

const seedFromEnv = envInt("QR_FUZZ_SEED");
/** One seed per test file (module), printed once, so the whole file can be replayed. */
export const FUZZ_SEED = seedFromEnv ?? (Date.now() ^ (Math.random() * 0x7fffffff)) | 0;
const longSeconds = envInt("QR_FUZZ_SECONDS");
const runsFromEnv = envInt("QR_FUZZ_RUNS");

export interface Budget {
  /** Runs in the CI form. */
  runs: number;
  /** Seconds in the CI form; the long form uses QR_FUZZ_SECONDS instead. */
  seconds: number;
}

/** fast-check parameters for one property under `ci` (or the long form's budget). */
export function fuzzParams<T>(ci: Budget): fc.Parameters<T> {
  const seconds = longSeconds ?? ci.seconds;
  const numRuns = runsFromEnv ?? (longSeconds !== undefined ? 1_000_000_000 : ci.runs);
  return {
    seed: FUZZ_SEED,
    numRuns,
    // Time-bounded: whatever ran by then counts as a pass (a hang inside one run is caught by the
    // property's own deadlines, not by this budget).
    interruptAfterTimeLimit: seconds * 1000,
    markInterruptAsFailure: false,
    endOnFailure: false,
    reporter: (details) => {
      if (longSeconds !== undefined || details.failed) console.log(`[fuzz] ${details.numRuns} runs${details.interrupted ? " (time budget reached)" : ""}, seed ${FUZZ_SEED}`);
      if (details.failed) {
        const err = details.errorInstance;
        throw new Error(`${fc.defaultReportMessage(details)}\nError: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
    },
  };
}

/** The vitest timeout a property under `ci` needs: its budget plus time to shrink a failure. */
export function fuzzTimeoutMs(ci: Budget): number {
  return ((longSeconds ?? ci.seconds) + 90) * 1000;
}

let announced = false;
/** Prints the seed (once per file) so a failing CI run can be replayed. */
export function announceSeed(file: string): void {
  if (announced) return;
  announced = true;
  console.log(`[fuzz] ${file}: QR_FUZZ_SEED=${FUZZ_SEED}${longSeconds !== undefined ? ` QR_FUZZ_SECONDS=${longSeconds}` : ""}`);
}

/** Keys a hostile document may use to reach Object.prototype behaviour through a parser. */
export const PROTO_KEYS = ["__proto__", "constructor", "prototype", "toString", "valueOf", "toJSON", "hasOwnProperty", "then"] as const;

/** Path tricks for ids: traversal, absolute paths, NUL, separators, very long names. */
export const hostileIds = fc.oneof(
  fc.constantFrom(
    "../x",
    "..",
    ".",
    "../../etc/passwd",
    "/etc/passwd",
    "/",
    "a/../../b",
    "a\0b",
    "\0",
    "vm\\..\\x",
    "",
    " ",
    "vm\n1",
    "-rf",
    "x".repeat(255),
    "x".repeat(256),
    "x".repeat(5000),
    "é".repeat(40),
    "vm%2f..%2f",
    "CON",
  ),
  fc.string({ maxLength: 40 }),
  fc.string({ unit: "binary", maxLength: 300 }),
  fc.array(fc.constantFrom("..", ".", "a", "", "\0"), { maxLength: 6 }).map((p) => p.join("/")),
);

/** Arbitrary JSON-like values with hostile keys mixed in. */
export const hostileValue: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.double(),
    fc.constantFrom(0, -1, 1e308, Number.MAX_SAFE_INTEGER + 2),
    fc.string({ maxLength: 20 }),
    hostileIds,
    fc.array(tie("value"), { maxLength: 4 }),
    fc.dictionary(fc.oneof(fc.string({ maxLength: 10 }), fc.constantFrom(...PROTO_KEYS)), tie("value"), { maxKeys: 5 }),
  ),
})).value;
