import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GuestAgentClient, GuestAgentCommandError, GuestAgentUnavailableError } from "../../../src/qemu/guestAgent/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

// qemu-ga runs here on the HOST, as whoever runs the tests (often root). A freeze would freeze
// the host's own filesystems, so the freeze RPCs are blocked, and so is everything else that
// could change the host, in case a test ever sends more than it means to.
const BLOCKED_RPCS = [
  "guest-fsfreeze-freeze",
  "guest-fsfreeze-freeze-list",
  "guest-fsfreeze-thaw",
  "guest-shutdown",
  "guest-suspend-disk",
  "guest-suspend-ram",
  "guest-suspend-hybrid",
  "guest-exec",
  "guest-file-open",
  "guest-set-time",
  "guest-set-user-password",
  "guest-set-vcpus",
  "guest-set-memory-blocks",
  "guest-fstrim",
  "guest-ssh-add-authorized-keys",
  "guest-ssh-remove-authorized-keys",
];

function findQemuGa(): string | undefined {
  for (const candidate of ["qemu-ga", "/usr/sbin/qemu-ga", "/usr/bin/qemu-ga"]) {
    if (spawnSync(candidate, ["--version"]).status === 0) return candidate;
  }
  return undefined;
}

describe("GuestAgentClient against a real qemu-ga (freeze blocked)", () => {
  const tmp = makeTmpDir("qr-qga-");
  const socketPath = join(tmp.path, "qga.sock");
  const logPath = join(tmp.path, "qga.log");
  let proc: ChildProcess | undefined;
  let exited: Promise<unknown> = Promise.resolve();
  let qga: GuestAgentClient;
  /** Why qemu-ga cannot run here; every test skips with it. */
  let cannotRun: string | undefined;

  beforeAll(async () => {
    try {
      await startQemuGa();
    } catch (err) {
      cannotRun = `SKIP guest agent integration: ${(err as Error).message}`;
      console.warn(cannotRun);
    }
  });

  async function startQemuGa(): Promise<void> {
    const qemuGa = findQemuGa();
    if (!qemuGa) throw new Error("qemu-ga not found (Debian: apt-get install -y qemu-guest-agent)");
    expect(BLOCKED_RPCS).toEqual(expect.arrayContaining(["guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw"]));
    const args = ["-m", "unix-listen", "-p", socketPath, "-t", tmp.path, "-f", join(tmp.path, "qga.pid"), "-l", logPath];
    proc = spawn(qemuGa, [...args, "-b", BLOCKED_RPCS.join(",")], { stdio: "ignore" });
    exited = new Promise((resolve) => proc!.once("exit", resolve));
    const spawnError = new Promise<Error>((resolve) => proc!.once("error", resolve));
    const deadline = Date.now() + 10_000;
    while (!existsSync(socketPath)) {
      if (proc.exitCode !== null || Date.now() > deadline) {
        const log = existsSync(logPath) ? readFileSync(logPath, "utf8") : "(no log)";
        throw new Error(`qemu-ga did not create ${socketPath} (exit ${proc.exitCode}): ${log}`);
      }
      const failed = await Promise.race([spawnError, sleep(50)]);
      if (failed instanceof Error) throw new Error(`cannot run qemu-ga: ${failed.message}`);
    }
    qga = new GuestAgentClient({ socketPath, commandTimeoutMs: 5000 });
  }

  afterAll(async () => {
    qga?.close();
    if (proc && proc.exitCode === null) {
      proc.kill("SIGTERM");
      const gone = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
      if (!gone) {
        proc.kill("SIGKILL");
        await exited;
      }
    }
    tmp.cleanup();
  });

  it("pings and reads the freeze status", async (ctx) => {
    ctx.skip(cannotRun !== undefined, cannotRun);
    await qga.ping();
    expect(await qga.fsfreezeStatus()).toBe("thawed");
  });

  it("reports a blocked freeze as the agent's CommandNotFound error", async (ctx) => {
    ctx.skip(cannotRun !== undefined, cannotRun);
    const err = await qga.fsfreezeFreeze().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestAgentCommandError);
    expect(err).toMatchObject({ errorClass: "CommandNotFound", command: "guest-fsfreeze-freeze" });
    expect((err as Error).message).toMatch(/has been disabled/);
  });

  it("falls back to crash consistency when freeze is disabled, still running fn", async (ctx) => {
    ctx.skip(cannotRun !== undefined, cannotRun);
    let ranFn = false;
    const res = await qga.withFrozenFilesystems(
      async () => {
        ranFn = true;
        return "cut-off";
      },
      { freezeTimeoutMs: 3000 },
    );
    expect(ranFn).toBe(true);
    expect(res.result).toBe("cut-off");
    expect(res.consistency).toBe("crash");
    expect(res.freezeError).toBeInstanceOf(GuestAgentCommandError);
    expect(res.freezeError?.message).toMatch(/guest-fsfreeze-freeze has been disabled/);
    expect(await qga.fsfreezeStatus()).toBe("thawed");
  });

  it("resynchronises past a half-written request a previous client left behind", async (ctx) => {
    ctx.skip(cannotRun !== undefined, cannotRun);
    qga.close();
    await new Promise<void>((resolve, reject) => {
      const s = net.createConnection(socketPath, () => s.end('{"execute":"guest-fsfreeze-st', () => resolve()));
      s.once("error", reject);
    });
    await sleep(100);
    qga = new GuestAgentClient({ socketPath, commandTimeoutMs: 5000 });
    expect(await qga.fsfreezeStatus()).toBe("thawed");
    await qga.ping();
  });

  it("reports an agent that went away as unavailable", async (ctx) => {
    ctx.skip(cannotRun !== undefined, cannotRun);
    const other = new GuestAgentClient({ socketPath: join(tmp.path, "missing.sock") });
    await expect(other.ping()).rejects.toBeInstanceOf(GuestAgentUnavailableError);
  });
});
