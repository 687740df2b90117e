import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

/**
 * Writes `value` as JSON to `path` with write-then-rename and fsyncs of the file and its folder: a
 * crash leaves the old or the new content, never half of one. The file is 0600, the folder 0700.
 */
export function writeJsonDurably(path: string, value: unknown): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, JSON.stringify(value, null, 2), { mode: 0o600 });
  const fd = openSync(tmp, "r");
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, path);
  const dirFd = openSync(dirname(path), "r");
  fsyncSync(dirFd);
  closeSync(dirFd);
}
