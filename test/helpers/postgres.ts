/**
 * A real PostgreSQL 15 server for tests: `initdb` + `pg_ctl` in a private temporary directory, on a
 * free loopback port with its socket in that directory, run as an unprivileged user when the tests
 * run as root (initdb refuses root). `stop()` shuts it down and removes everything, and an exit
 * hook does the same if a test run dies before its afterAll.
 */
import { execFile, spawnSync } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export const PG_BIN = process.env.QREPLICA_PG_BIN ?? "/usr/lib/postgresql/15/bin";
/** The uid/gid the server runs as when we are root: "nobody". */
const UNPRIVILEGED = 65534;

export interface TestPostgres {
  /** postgres://postgres@127.0.0.1:PORT/postgres (trust authentication, loopback only). */
  url: string;
  port: number;
  dir: string;
  /** A fresh database on this server; returns its URL. */
  createDatabase(name: string): Promise<string>;
  stop(): Promise<void>;
}

/** Why a PostgreSQL server cannot be started here, or undefined when it can. */
export function postgresUnavailableReason(): string | undefined {
  for (const tool of ["initdb", "pg_ctl", "psql"]) {
    if (!existsSync(join(PG_BIN, tool))) {
      return `PostgreSQL 15 server binaries are missing (${join(PG_BIN, tool)}): run scripts/install.sh (Debian package postgresql-15) or set QREPLICA_PG_BIN`;
    }
  }
  return undefined;
}

/** CI must run the PostgreSQL suite: there a missing server is a failure, not a skip. */
export function postgresRequired(): boolean {
  return Boolean(process.env.CI || process.env.QR_REQUIRE_POSTGRES);
}

function asServerUser(cmd: string, args: string[]): [string, string[]] {
  if (process.getuid?.() !== 0) return [cmd, args];
  return ["setpriv", [`--reuid=${UNPRIVILEGED}`, `--regid=${UNPRIVILEGED}`, "--clear-groups", cmd, ...args]];
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

export async function startPostgres(): Promise<TestPostgres> {
  const reason = postgresUnavailableReason();
  if (reason) throw new Error(reason);
  const dir = mkdtempSync(join(tmpdir(), "qr-pg-"));
  const data = join(dir, "data");
  const log = join(dir, "server.log");
  if (process.getuid?.() === 0) chownSync(dir, UNPRIVILEGED, UNPRIVILEGED);
  const pgctl = (args: string[]) => asServerUser(join(PG_BIN, "pg_ctl"), args);
  const stopSync = () => {
    const [c, a] = pgctl(["-D", data, "-m", "immediate", "-w", "stop"]);
    if (existsSync(join(data, "postmaster.pid"))) spawnSync(c, a, { stdio: "ignore" });
    rmSync(dir, { recursive: true, force: true });
  };
  process.once("exit", stopSync);
  try {
    const [ic, ia] = asServerUser(join(PG_BIN, "initdb"), ["-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"]);
    await run(ic, ia, { env: { ...process.env, HOME: dir } });
    let lastErr: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      const port = await freePort();
      // fsync off: a test server's durability across an OS crash is irrelevant, its speed is not.
      const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`;
      const [sc, sa] = pgctl(["-D", data, "-l", log, "-o", opts, "-w", "-t", "60", "start"]);
      try {
        await run(sc, sa, { env: { ...process.env, HOME: dir } });
      } catch (err) {
        lastErr = err;
        continue;
      }
      const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
      return {
        url,
        port,
        dir,
        async createDatabase(name: string) {
          await run(join(PG_BIN, "psql"), ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", `CREATE DATABASE ${name}`]);
          return `postgres://postgres@127.0.0.1:${port}/${name}`;
        },
        async stop() {
          process.off("exit", stopSync);
          stopSync();
        },
      };
    }
    throw new Error(`PostgreSQL did not start: ${String(lastErr)}\n${existsSync(log) ? readFileSync(log, "utf8") : ""}`);
  } catch (err) {
    process.off("exit", stopSync);
    stopSync();
    throw err;
  }
}
