/**
 * TEST-ONLY fault injection: crash windows made deterministic. When the environment variable
 * QREPLICA_FAULT names a fault point, the process SIGKILLs itself the first time it reaches that
 * point, exactly as a power cut or `kill -9` would end it there: no finally blocks, no flushes, no
 * graceful shutdown. The end-to-end tests start a site with it, then restart the site normally and
 * check the invariants. Never set it in production: it exists to prove what a real crash leaves.
 *
 * A comma-separated list arms several points; each fires at most once per process.
 */
import { spawn } from "node:child_process";

export type FaultPoint =
  /** The site recorded CycleCommitted but has not sent the ack. */
  | "crash-after-commit-before-ack"
  /** A point's overlays were renamed from `.partial` to their final names; the ledger has no CycleCommitted yet. */
  | "crash-after-rename-before-ledger"
  /** `qemu-img commit` of a retention merge (`qemu-img rebase` of a thinning) is running: it dies with the site (as on a host crash). */
  | "crash-mid-merge"
  /** The merge's `qemu-img commit` finished; the next overlay is not rebased onto the base yet. */
  | "crash-after-merge-commit"
  /** The images are merged and rebased (or a thinned point folded into the next); the ledger has no RecoveryPointMerged yet. */
  | "crash-before-merge-recorded"
  /** PostgreSQL ledger: a CycleCommitted append's rows are inserted, its transaction not committed. */
  | "crash-mid-ledger-append"
  /** A failover is recorded and its VM's QEMU started; the site has not recorded that VM yet. */
  | "crash-mid-failover-launch";

const ENV = "QREPLICA_FAULT";
const fired = new Set<string>();

function armed(point: FaultPoint): boolean {
  const spec = process.env[ENV];
  if (!spec || fired.has(point)) return false;
  return spec
    .split(",")
    .map((s) => s.trim())
    .includes(point);
}

function die(point: FaultPoint): never {
  fired.add(point);
  process.stderr.write(`${ENV}: ${point}: SIGKILL\n`);
  process.kill(process.pid, "SIGKILL");
  // SIGKILL is delivered before the next instruction matters; this only satisfies `never`.
  throw new Error(`${point}: still alive after SIGKILL`);
}

/** Ends the process with SIGKILL here if QREPLICA_FAULT arms `point`; otherwise does nothing. */
export function faultPoint(point: FaultPoint): void {
  if (armed(point)) die(point);
}

/**
 * If `point` is armed: runs `command` as the real code would, kills it a moment after it started
 * and then this process, so the crash lands while the tool is working. Otherwise does nothing.
 */
export async function faultWhileRunning(point: FaultPoint, command: string, args: readonly string[]): Promise<void> {
  if (!armed(point)) return;
  const child = spawn(command, args, { stdio: "ignore" });
  await new Promise<void>((resolve) => {
    child.once("spawn", () => resolve());
    child.once("error", () => resolve());
  });
  await new Promise((r) => setTimeout(r, 5));
  child.kill("SIGKILL");
  die(point);
}
