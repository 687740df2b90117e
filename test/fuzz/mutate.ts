/**
 * Documents near a valid one: most of a hostile config is well formed, so pure noise only ever
 * reaches the first check of a parser. A mutation replaces, deletes or adds one field anywhere in
 * the document, and remembers where, so a test can ask that the error names that field.
 */
import fc from "fast-check";
import { hostileValue } from "./budget.js";

export type Segment = string | number;
export interface Mutation {
  path: Segment[];
  op: "replace" | "delete" | "add";
  value?: unknown;
  doc: unknown;
}

/** Every path to a node of `doc` (objects and arrays), the root included. */
function pathsOf(doc: unknown, at: Segment[] = [], out: Segment[][] = []): Segment[][] {
  out.push(at);
  if (Array.isArray(doc)) doc.forEach((v, i) => pathsOf(v, [...at, i], out));
  else if (doc !== null && typeof doc === "object") for (const [k, v] of Object.entries(doc)) pathsOf(v, [...at, k], out);
  return out;
}

function clone<T>(v: T): T {
  return structuredClone(v);
}

function apply(doc: unknown, m: Omit<Mutation, "doc">): unknown {
  if (m.path.length === 0) return m.op === "delete" ? undefined : m.value;
  const root = clone(doc);
  let node = root as Record<Segment, unknown>;
  for (const s of m.path.slice(0, -1)) node = node[s] as Record<Segment, unknown>;
  const last = m.path[m.path.length - 1]!;
  if (m.op === "delete") {
    if (Array.isArray(node) && typeof last === "number") node.splice(last, 1);
    else delete node[last];
  } else if (m.op === "add") {
    const target = node[last];
    if (Array.isArray(target)) target.push(m.value);
    else if (target !== null && typeof target === "object")
      Object.defineProperty(target, `extra${Object.keys(target).length}`, { value: m.value, enumerable: true, configurable: true, writable: true });
    else node[last] = m.value;
  } else {
    Object.defineProperty(node, last, { value: m.value, enumerable: true, configurable: true, writable: true });
  }
  return root;
}

/** One mutation of `valid`. */
export function mutationOf(valid: unknown): fc.Arbitrary<Mutation> {
  const paths = pathsOf(valid);
  return fc.record({ path: fc.constantFrom(...paths), op: fc.constantFrom("replace", "replace", "delete", "add"), value: hostileValue }).map(({ path, op, value }) => {
    const m = { path, op, value } as Omit<Mutation, "doc">;
    return { ...m, doc: apply(valid, m) };
  });
}

/** Several mutations of `valid` applied in turn (only the document is kept). */
export function mutatedDoc(valid: unknown, max = 4): fc.Arbitrary<unknown> {
  return fc.array(fc.nat(), { minLength: 1, maxLength: max }).chain((picks) => {
    let arb: fc.Arbitrary<unknown> = fc.constant(valid);
    for (const _ of picks) arb = arb.chain((d) => (d !== null && typeof d === "object" ? mutationOf(d).map((m) => m.doc) : fc.constant(d)));
    return arb;
  });
}

/** The field a mutation touched, as a parser names it (the last named key on its path). */
export function fieldName(path: Segment[]): string | undefined {
  for (let i = path.length - 1; i >= 0; i--) if (typeof path[i] === "string") return path[i] as string;
  return undefined;
}
