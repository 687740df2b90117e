import { chmodSync, lstatSync, readdirSync } from "node:fs";
import { join } from "node:path";

/**
 * Takes group and other permissions off everything under `root` (symlinks are left alone, and
 * not followed). New files are created 0600/0700 already; this tightens a site directory made by
 * an older version, whose images, ledger and keys may still be readable by other users (invariant
 * 9). Returns how many entries were changed.
 */
export function tightenTree(root: string): number {
  let changed = 0;
  const visit = (path: string) => {
    let st;
    try {
      st = lstatSync(path);
    } catch {
      return; // gone meanwhile
    }
    if (st.isSymbolicLink()) return;
    if ((st.mode & 0o077) !== 0) {
      chmodSync(path, st.mode & 0o7700);
      changed++;
    }
    if (st.isDirectory()) for (const name of readdirSync(path)) visit(join(path, name));
  };
  visit(root);
  return changed;
}
