import { closeSync, mkdirSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { SiteDirectoryInUseError } from "./errors.js";

export interface SiteLock {
  release(): void;
}

/**
 * One site process per directory. The lock is SQLite's own: `locking_mode=EXCLUSIVE` plus
 * `BEGIN EXCLUSIVE` takes a POSIX fcntl write lock on `run/site.lock` and keeps it until the
 * connection closes. The kernel drops such a lock the moment its process dies, kill -9 and
 * power-cut reboots included, so a crashed site never leaves a stale lock behind and no pid has
 * to be trusted for correctness (a pid file alone can name a recycled pid). `run/site.pid` only
 * tells the refused second process whom to name in its message.
 *
 * Taken before anything else in the directory is opened, killed or written: a refused second
 * `site serve` changes nothing.
 */
export function lockSiteDirectory(dir: string, runDir: string): SiteLock {
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  const lockPath = join(runDir, "site.lock");
  const pidPath = join(runDir, "site.pid");
  // Created 0600 here so SQLite (which keeps an existing file's mode) never makes it readable.
  closeSync(openSync(lockPath, "a", 0o600));
  const db = new Database(lockPath, { timeout: 0 });
  try {
    db.pragma("locking_mode = EXCLUSIVE");
    db.exec("BEGIN EXCLUSIVE; COMMIT;");
  } catch (err) {
    db.close();
    if ((err as { code?: string }).code === "SQLITE_BUSY") throw new SiteDirectoryInUseError(dir, readPid(pidPath));
    throw err;
  }
  const fd = openSync(pidPath, "w", 0o600);
  writeSync(fd, `${process.pid}\n`);
  closeSync(fd);
  return {
    release() {
      db.close();
    },
  };
}

function readPid(path: string): number | undefined {
  try {
    const pid = Number(readFileSync(path, "utf8").trim());
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}
