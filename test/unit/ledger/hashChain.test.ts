import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ChainVerifier, GENESIS_HASH, canonicalJson, computeEventHash, type ChainRow } from "../../../src/ledger/hashChain.js";
import { LedgerArgumentError } from "../../../src/ledger/errors.js";

describe("canonicalJson", () => {
  it("sorts keys at every depth and keeps array order", () => {
    expect(canonicalJson({ b: 1, a: [{ d: 2, c: "é" }, 3], "": null })).toBe('{"":null,"a":[{"c":"é","d":2},3],"b":1}');
  });

  it("is the same for equal values built in different key orders", () => {
    expect(canonicalJson({ x: { q: 1, p: 2 }, y: true })).toBe(canonicalJson({ y: true, x: { p: 2, q: 1 } }));
  });

  it("is stable across a parse round trip", () => {
    const text = canonicalJson({ s: "\u2028 🚀 \ud800", n: -0, f: 0.1 + 0.2, big: 1e21, u: undefined });
    expect(canonicalJson(JSON.parse(text))).toBe(text);
  });

  it.each<[string, unknown]>([
    ["bigint", { a: 1n }],
    ["Date", { a: new Date(0) }],
    ["Map", { a: new Map() }],
    ["NaN", { a: Number.NaN }],
    ["Infinity", [Infinity]],
    ["undefined in an array", [1, undefined]],
    ["function", { a: () => 1 }],
    ["symbol", { a: Symbol("s") }],
  ])("refuses %s with the path of the value", (_what, value) => {
    expect(() => canonicalJson(value)).toThrow(LedgerArgumentError);
    expect(() => canonicalJson(value)).toThrow(/^\$(\.a|\[\d\])/);
  });
});

describe("computeEventHash", () => {
  it("is sha256 of previousHash followed by the canonical event body", () => {
    const input = { stream: "s", version: 3n, type: "T", data: { b: 2, a: 1 }, metadata: {}, recordedAt: "2024-01-02T03:04:05.678Z" };
    const body = '{"data":{"a":1,"b":2},"metadata":{},"recordedAt":"2024-01-02T03:04:05.678Z","stream":"s","type":"T","version":"3"}';
    const expected = createHash("sha256")
      .update(GENESIS_HASH + body)
      .digest("hex");
    expect(computeEventHash(GENESIS_HASH, input)).toBe(expected);
  });
});

describe("ChainVerifier", () => {
  const at = "2024-01-01T00:00:00.000Z";
  function chain(stream: string, n: number, startPosition = 1n): ChainRow[] {
    let prev = GENESIS_HASH;
    return Array.from({ length: n }, (_, i) => {
      const base = { stream, version: BigInt(i), type: "T", data: { i }, metadata: {}, recordedAt: at };
      const hash = computeEventHash(prev, base);
      const row = { ...base, globalPosition: startPosition + BigInt(i), hash, previousHash: prev };
      prev = hash;
      return row;
    });
  }
  const verify = (rows: ChainRow[]) => {
    const v = new ChainVerifier();
    rows.forEach((r) => v.add(r));
    return v.report();
  };

  it("accepts intact chains", () => {
    expect(verify([...chain("a", 3), ...chain("b", 2, 10n)])).toEqual({ ok: true, streams: 2, events: 5, problems: [] });
  });

  it("reports only the first broken link per stream", () => {
    const a = chain("a", 4);
    a[1] = { ...a[1]!, data: { i: 99 } };
    const report = verify([...a, ...chain("b", 2, 10n)]);
    expect(report.ok).toBe(false);
    expect(report.problems).toEqual([{ stream: "a", version: 1n, globalPosition: 2n, reason: expect.stringMatching(/modified/) }]);
  });

  it("names missing versions", () => {
    const a = chain("a", 5);
    const report = verify([a[0]!, a[1]!, a[4]!]);
    expect(report.problems[0]).toMatchObject({ stream: "a", version: 4n, reason: "version 2..3 missing before version 4" });
  });

  it("reports a stream whose first event is missing", () => {
    expect(verify(chain("a", 3).slice(1)).problems[0]).toMatchObject({ version: 1n, reason: "version 0 missing before version 1" });
  });
});
