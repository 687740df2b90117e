import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** The URL of `dist/MODULE.js`; a checkout that was never built is told the fix, not a module-resolution stack trace. */
export function compiledEntry(bin, module) {
  const url = new URL(`../dist/${module}.js`, import.meta.url);
  if (!existsSync(url)) {
    const root = fileURLToPath(new URL("..", import.meta.url));
    console.error(`${bin}: ${fileURLToPath(url)} is missing: run \`npm run build\` in ${root} (or run the sources: npx tsx ${module}.ts)`);
    process.exit(1);
  }
  return url.href;
}
