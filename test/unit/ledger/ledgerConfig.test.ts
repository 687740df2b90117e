import { describe, expect, it } from "vitest";
import { describeLedger, parseLedgerConfig } from "../../../src/ledger/ledgerConfig.js";

describe("site.json 'ledger'", () => {
  it.each([
    [{ kind: "sqlite" }],
    [{ kind: "postgres", url: "postgres://qr@db.example:5432/dr" }],
    [{ kind: "postgres", url: "postgresql://qr@db/dr?sslmode=require", schema: "site_b" }],
    [{ kind: "kurrentdb", url: "kurrentdb://kdb.example:2113?tls=true", namespace: "site-b" }],
    [{ kind: "kurrentdb", url: "kurrentdb+discover://a,b,c:2113" }],
  ])("accepts %j", (value) => {
    expect(parseLedgerConfig(value)).toEqual({ ok: true, config: value });
  });

  it.each<[unknown, RegExp]>([
    [{ kind: "mysql", url: "mysql://x" }, /field 'ledger\.kind'|field 'ledger' must have "kind"/],
    [{ kind: "postgres" }, /field 'ledger\.url'/],
    [{ kind: "postgres", url: "http://db" }, /field 'ledger\.url': must be a postgres:\/\//],
    [{ kind: "postgres", url: "postgres://db", schema: "Site-B" }, /field 'ledger\.schema': use 1-40 characters/],
    [{ kind: "postgres", url: "postgres://db", namespace: "x" }, /ledger/],
    [{ kind: "kurrentdb", url: "postgres://db" }, /field 'ledger\.url': must be a kurrentdb:\/\//],
    ["postgres", /ledger/],
  ])("refuses %j naming the field", (value, message) => {
    const r = parseLedgerConfig(value);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.problems.join("; ")).toMatch(message);
  });

  it("never shows a password in the ledger's description", () => {
    const d = describeLedger({ kind: "postgres", url: "postgres://qr:s3cret@db:5432/dr", schema: "b" }, "/x");
    expect(d).toBe("postgres://qr:***@db:5432/dr (schema b)");
  });
});

describe("loadSiteConfig with a 'ledger' field", () => {
  it("parses it, and names the file and the field when it is wrong", async () => {
    const { mkdtempSync, rmSync, writeFileSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const { loadSiteConfig } = await import("../../../src/site/siteConfig.js");
    const dir = mkdtempSync(join(tmpdir(), "qr-ledgercfg-"));
    try {
      const base = { siteId: "b", listen: "127.0.0.1:0", caFile: "ca.crt", certFile: "s.crt", keyFile: "s.key", ledgerPath: "ledger.sqlite", storageRoot: "images" };
      writeFileSync(join(dir, "site.json"), JSON.stringify({ ...base, ledger: { kind: "postgres", url: "postgres://db/dr", schema: "site_b" } }));
      expect(loadSiteConfig(dir).ledger).toEqual({ kind: "postgres", url: "postgres://db/dr", schema: "site_b" });
      writeFileSync(join(dir, "site.json"), JSON.stringify({ ...base, ledger: { kind: "postgres", url: "mysql://db" } }));
      expect(() => loadSiteConfig(dir)).toThrow(`${join(dir, "site.json")}: ledger.url: must be a postgres:// or postgresql:// URL`);
      writeFileSync(join(dir, "site.json"), JSON.stringify(base));
      expect(loadSiteConfig(dir).ledger).toBeUndefined();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
