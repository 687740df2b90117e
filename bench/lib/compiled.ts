import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "../..");
const MARKER = join(ROOT, "dist/src/cli/main.js");

function newestSource(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestSource(path));
    else if (e.name.endsWith(".ts")) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

/**
 * The benchmarks that measure the site's and agent's processes run them as installed: the bins
 * over the compiled dist/. Builds it (`npm run build`) when it is missing or older than a source
 * file, so a figure never comes from stale code.
 */
export function ensureCompiled(log: (m: string) => void): void {
  const built = existsSync(MARKER) ? statSync(MARKER).mtimeMs : 0;
  if (built >= Math.max(newestSource(join(ROOT, "src")), newestSource(join(ROOT, "replica-agent")))) return;
  log(built ? "dist/ is older than the sources: npm run build" : "no dist/: npm run build");
  const r = spawnSync("npm", ["run", "build"], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
  if (r.status !== 0) throw new Error(`npm run build failed (${r.status}): ${r.stdout}${r.stderr}`);
}
