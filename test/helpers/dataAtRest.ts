import { lstatSync, readdirSync } from "node:fs";
import { join } from "node:path";

/** Every file, directory and socket under `root` that grants anything to group or others. */
export function offenders(root: string): string[] {
  const found: string[] = [];
  const walk = (path: string) => {
    const st = lstatSync(path);
    if ((st.mode & 0o077) !== 0) found.push(`${(st.mode & 0o7777).toString(8).padStart(4, "0")} ${path}`);
    if (st.isDirectory()) for (const name of readdirSync(path)) walk(join(path, name));
  };
  walk(root);
  return found;
}

/** How many entries the walk saw, so an empty walk cannot pass. */
export function count(root: string): number {
  const st = lstatSync(root);
  return 1 + (st.isDirectory() ? readdirSync(root).reduce((n, name) => n + count(join(root, name)), 0) : 0);
}
