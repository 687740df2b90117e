import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

/**
 * The import boundaries DESIGN.md draws: the agent shares only src/model/ (and the neutral layers:
 * common, codec, gen, qemu, transport, policy's shapes) with the site, never the site's or the CLI's
 * code; runbooks reach the site and the ledger only through their ports (RunbookTarget,
 * RunLogStore), so they import neither src/cli/ nor the ledger; src/model/ depends on no role.
 */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

interface Rule {
  from: string;
  forbidden: string[];
}

const RULES: Rule[] = [
  { from: "replica-agent", forbidden: ["src/site", "src/cli", "src/ledger", "src/runbook"] },
  { from: "src/runbook", forbidden: ["src/cli", "src/site", "src/ledger", "replica-agent"] },
  { from: "src/model", forbidden: ["src/site", "src/cli", "src/ledger", "src/runbook", "replica-agent"] },
];

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return /\.(ts|mts)$/.test(e.name) && !e.name.endsWith(".d.ts") ? [p] : [];
  });
}

/** Every module a file names: static imports, re-exports, `import type`, dynamic `import()`. */
function importedSpecifiers(source: string): string[] {
  const out: string[] = [];
  const patterns = [/\b(?:import|export)\s[^;]*?\sfrom\s*["']([^"']+)["']/g, /\bimport\s*["']([^"']+)["']/g, /\bimport\s*\(\s*["']([^"']+)["']\s*\)/g];
  for (const re of patterns) for (const m of source.matchAll(re)) out.push(m[1]!);
  return out;
}

function violations(rule: Rule): string[] {
  const found: string[] = [];
  for (const file of sourceFiles(join(ROOT, rule.from))) {
    for (const spec of importedSpecifiers(readFileSync(file, "utf8"))) {
      if (!spec.startsWith(".")) continue;
      const target = relative(ROOT, resolve(dirname(file), spec));
      const bad = rule.forbidden.find((f) => target === f || target.startsWith(`${f}/`));
      if (bad) found.push(`${relative(ROOT, file)} imports ${spec} (${bad}/ is out of bounds for ${rule.from}/)`);
    }
  }
  return found;
}

describe("import boundaries", () => {
  for (const rule of RULES) {
    it(`${rule.from}/ imports nothing from ${rule.forbidden.join(", ")}`, () => {
      expect(violations(rule)).toEqual([]);
    });
  }

  it("the scanner sees every form of import (so the rules above can fail)", () => {
    const src = [
      `import { a } from "../../src/site/x.js";`,
      `import type {\n  B,\n} from "../cli/y.js";`,
      `export { c } from "../ledger/index.js";`,
      `export * from "./z.js";`,
      `import "./side-effect.js";`,
      `const m = await import("../site/lazy.js");`,
    ].join("\n");
    expect(importedSpecifiers(src).sort()).toEqual(["../../src/site/x.js", "../cli/y.js", "../ledger/index.js", "../site/lazy.js", "./side-effect.js", "./z.js"].sort());
  });
});
