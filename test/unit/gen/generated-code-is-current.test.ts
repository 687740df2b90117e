import { execFile } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
const committedDir = join(repoRoot, "src/gen");

// Hand-rolled recursion: Dirent.parentPath only exists from Node 20.12, and engines allows 20.0.
function listFiles(root: string, dir = root): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? listFiles(root, join(dir, e.name)) : e.isFile() ? [relative(root, join(dir, e.name))] : []))
    .sort();
}

describe("src/gen", () => {
  const tmp = makeTmpDir("qr-gen-");
  afterAll(() => tmp.cleanup());

  it("is exactly what `buf generate` produces from proto/ with buf.gen.yaml", async () => {
    // --output re-roots buf.gen.yaml's `out: src/gen`, so this runs the committed template itself
    // (options included) rather than a copy that could drift from it.
    await promisify(execFile)(join(repoRoot, "node_modules/.bin/buf"), ["generate", "--output", tmp.path], {
      cwd: repoRoot,
    });
    const freshDir = join(tmp.path, "src/gen");
    const fresh = listFiles(freshDir);
    const committed = listFiles(committedDir);

    const missing = fresh.filter((f) => !committed.includes(f));
    const extra = committed.filter((f) => !fresh.includes(f));
    const changed = fresh.filter((f) => committed.includes(f) && !readFileSync(join(freshDir, f)).equals(readFileSync(join(committedDir, f))));
    const problems = [
      ...changed.map((f) => `differs: src/gen/${f}`),
      ...missing.map((f) => `not committed: src/gen/${f}`),
      ...extra.map((f) => `no longer generated: src/gen/${f}`),
    ];
    expect(
      problems,
      `src/gen is stale relative to proto/ and buf.gen.yaml:\n  ${problems.join("\n  ")}\n` + "Fix: run `npm run gen` and commit src/gen (never edit generated files by hand).",
    ).toEqual([]);
    expect(fresh.length).toBeGreaterThan(0);
  });
});
