/**
 * What every config edge (agent config, site.json, authorization entries) shares with the policy
 * schema (src/policy/schema.ts): zod schemas whose fields carry their own messages, unknown keys
 * refused, and zod's issues turned into "path: problem; fix" lines an operator can act on.
 */
import { z } from "zod";

type Parsed<T> = { value: T } | { error: string };

/** A field checked by `parse`; its error message becomes the issue (zod adds the path). */
export function field<T>(parse: (v: unknown) => Parsed<T>) {
  return z.unknown().transform((v, ctx): T => {
    const r = parse(v);
    if ("error" in r) {
      ctx.addIssue({ code: "custom", message: r.error });
      return z.NEVER;
    }
    return r.value;
  });
}

/** A value as a message shows it: strings quoted and cut, containers by kind (String() of a hostile mapping can throw). */
export function show(v: unknown): string {
  if (v === undefined) return "nothing";
  if (typeof v === "string") return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}...` : v);
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  return typeof v === "object" ? "a mapping" : String(v);
}

/** "is missing" for an absent required field, else what `v` is not. */
const bad = (v: unknown, isNot: string, fix: string) => ({ error: `${v === undefined ? "is missing" : `${show(v)} is not ${isNot}`}${fix ? `; ${fix}` : ""}` });

/** A whole number from `min` to `max`; `fix` says what it is for and its default. */
export const intIn = (min: number, max: number, fix: string) =>
  field<number>((v) => (typeof v === "number" && Number.isInteger(v) && v >= min && v <= max ? { value: v } : bad(v, `a whole number from ${min} to ${max}`, fix)));

/** A number (fractions allowed) from `min` to `max`. */
export const numberIn = (min: number, max: number, fix: string) =>
  field<number>((v) => (typeof v === "number" && Number.isFinite(v) && v >= min && v <= max ? { value: v } : bad(v, `a number from ${min} to ${max}`, fix)));

/** A finite number above 0. */
export const positive = (fix: string) => field<number>((v) => (typeof v === "number" && Number.isFinite(v) && v > 0 ? { value: v } : bad(v, "a number above 0", fix)));

/** A non-empty string; `fix` says what to write. */
export const text = (fix: string) => field<string>((v) => (typeof v === "string" && v !== "" ? { value: v } : bad(v, "a non-empty string", fix)));

/** One of a few literal strings. */
export const oneOf = <const T extends readonly string[]>(values: T, fix = "") =>
  field<T[number]>((v) => (typeof v === "string" && (values as readonly string[]).includes(v) ? { value: v as T[number] } : bad(v, `one of ${values.join(", ")}`, fix)));

/** A `host:port` address with a port from `minPort` (0 for "any free port") to 65535. */
export const hostPortField = (minPort: number, example: string) =>
  field<string>((v) => {
    const m = typeof v === "string" ? /^(\[[0-9A-Fa-f:.]+\]|[^\s:[\]/]+):(\d{1,5})$/.exec(v) : null;
    const port = m ? Number(m[2]) : Number.NaN;
    return m && port >= minPort && port <= 65535 ? { value: v as string } : bad(v, `host:port with a port from ${minPort} to 65535`, `write e.g. ${example}`);
  });

export interface SchemaProblem {
  /** `vms[0].compressionLevel`; "" for the document itself. */
  path: string;
  message: string;
}

export function pathText(path: readonly PropertyKey[]): string {
  return path.reduce<string>((out, p) => (typeof p === "number" ? `${out}[${p}]` : out ? `${out}.${String(p)}` : String(p)), "");
}

/** zod's issues as the operator reads them: the field's path, what is wrong, and the fix. */
export function schemaProblems(schema: z.ZodType, error: z.ZodError): SchemaProblem[] {
  return error.issues.flatMap((iss): SchemaProblem[] => {
    const path = pathText(iss.path);
    if (iss.code === "unrecognized_keys") {
      const known = knownKeys(schema, iss.path, iss.input, iss.keys);
      return iss.keys.map((k) => {
        const near = known.find((f) => isNearMiss(k, f));
        return { path: pathText([...iss.path, k]), message: `unknown field${near ? `: did you mean '${near}'?` : ""}; the fields here are ${known.join(", ")}` };
      });
    }
    if (iss.code === "invalid_type" && iss.input === undefined) return [{ path, message: "is missing" }];
    if (iss.code === "invalid_type") {
      const expected = iss.expected === "object" ? "a mapping" : iss.expected === "array" ? "a list" : `a ${iss.expected}`;
      return [{ path, message: `is ${show(iss.input)}; expected ${expected}` }];
    }
    return [{ path, message: iss.message }];
  });
}

/** "path: message" lines joined for one error message. */
export function problemsText(problems: readonly SchemaProblem[]): string {
  return problems.map((p) => (p.path ? `${p.path}: ${p.message}` : p.message)).join("; ");
}

/** The keys the object schema at `path` takes, for "the fields here are ..." and "did you mean". */
function knownKeys(schema: z.ZodType, path: readonly PropertyKey[], input: unknown, unknown: readonly string[]): string[] {
  let s: unknown = schema;
  for (const seg of [...path, undefined]) {
    s = unwrap(s);
    if (seg === undefined) {
      // A union of mappings (the ledger's kinds): the option the mapping's other keys fit.
      if (s instanceof z.ZodUnion && typeof input === "object" && input !== null) {
        const given = Object.keys(input).filter((k) => !unknown.includes(k));
        s = (s.options as unknown[]).find(
          (o) => o instanceof z.ZodObject && given.every((k) => k in o.shape && o.shape[k]!.safeParse((input as Record<string, unknown>)[k]).success),
        );
      }
      break;
    }
    if (s instanceof z.ZodObject && typeof seg === "string") s = (s.shape as Record<string, unknown>)[seg];
    else if (s instanceof z.ZodArray && typeof seg === "number") s = s.element;
    else return [];
  }
  return s instanceof z.ZodObject ? Object.keys(s.shape) : [];
}

function unwrap(s: unknown): unknown {
  for (;;) {
    if (s instanceof z.ZodOptional || s instanceof z.ZodDefault || s instanceof z.ZodNullable) s = s.unwrap();
    else if (s instanceof z.ZodPipe) s = s.in;
    else return s;
  }
}

/** A typo (two edits at most) or a shortened name (`intervalSecs`, `rpoAlert`) of `known`. */
function isNearMiss(key: string, known: string): boolean {
  const a = key.toLowerCase();
  const b = known.toLowerCase();
  if (editDistance(a, b) <= 2) return true;
  let common = 0;
  while (common < a.length && a[common] === b[common]) common++;
  return common >= 6 && common >= (a.length * 2) / 3;
}

export function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const here = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = here;
    }
  }
  return row[b.length]!;
}
