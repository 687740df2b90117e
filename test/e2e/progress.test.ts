/**
 * Issue 12, item 4: long commands show progress. A real agent and site, the initial copy paced by
 * a policy's bandwidth limit so it lasts a few seconds: `qreplica wait` with stderr to a pipe
 * prints one JSON object per line (bytes growing, then the commit with the disk's full size) while
 * stdout is one JSON document; the same command on a terminal (util-linux `script`) draws a bar;
 * `resync --wait --json` ends with the resync's commit and one JSON document on stdout.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { CLI, cliJson, runCli, waitFor } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const DISK = 16 * MiB;
const ROOT = resolve(import.meta.dirname, "../..");
const setup = twoSitesPerTest();

interface ProgressLine {
  event: "progress" | "committed" | "cycle-ended" | "phase";
  vm: string;
  kind?: string;
  cycleSequence?: number;
  bytesDone?: number;
  bytesTotal?: number;
  bytesPerSecond?: number;
  etaSeconds?: number | null;
  recoveryPointId?: string;
  message?: string;
}

async function randomWrite(t: TwoSites, offsetMiB: number, sizeMiB: number): Promise<void> {
  const file = join(t.dir, `random-${offsetMiB}.bin`);
  writeFileSync(file, randomBytes(sizeMiB * MiB));
  await t.vm.guestWrite("vda", [`write -s ${file} ${offsetMiB}M ${sizeMiB}M`]);
}

/** A CLI process whose output is collected; `exited` resolves with its code. */
function startCli(command: string, args: string[]) {
  const child = spawn(command, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  const out = { stdout: "", stderr: "" };
  child.stdout.on("data", (d: Buffer) => (out.stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (out.stderr += d.toString()));
  const exited = new Promise<number | null>((r) => child.once("close", (code) => r(code)));
  return { child, out, exited };
}

const parseLines = (text: string): ProgressLine[] =>
  text
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as ProgressLine);

describe("progress of long commands", { timeout: 240_000 }, () => {
  it("wait: JSON lines with growing bytes and the full size at the commit, a bar on a terminal; resync --wait --json", async () => {
    const t = await setup("qr-progress-", { diskBytes: DISK, intervalSeconds: 3600 });
    await t.startSite(t.siteB);
    const policy = join(t.dir, "slow.yaml");
    writeFileSync(policy, `name: slow\nfrequency: 1h\nbandwidth:\n  - { limit: 1MiB/s, window: { from: "00:00", to: "00:00" } }\n`);
    await cliJson(["policy", "apply", policy, "--dir", t.siteB]);
    // Incompressible: the limit paces the initial copy (about 8 s for 8 MiB).
    await randomWrite(t, 0, 8);

    // Both start before the agent: they wait for the relationship to appear.
    const piped = startCli(process.execPath, ["--import", "tsx", CLI, "wait", "vm1", "--dir", t.siteB, "--json", "--timeout", "180"]);
    const tty = startCli("script", ["-qefc", `${process.execPath} --import tsx ${CLI} wait vm1 --dir ${t.siteB} --timeout 180`, "/dev/null"]);
    try {
      // The agent starts once both are polling (a loaded machine may take seconds to start a CLI).
      await waitFor(
        "both waits polling",
        () => (piped.out.stderr.includes("waiting for the primary's agent") && tty.out.stdout.includes("waiting for the primary's agent") ? true : undefined),
        120_000,
      );
      t.startAgent({ policy: "slow" });
      expect(await piped.exited, piped.out.stderr).toBe(0);
      expect(await tty.exited, tty.out.stdout).toBe(0);
    } finally {
      piped.child.kill("SIGKILL");
      tty.child.kill("SIGKILL");
    }

    // stdout: one JSON document, enum names.
    const status = JSON.parse(piped.out.stdout) as { vmId: string; state: string; lastRecoveryPoint: { recoveryPointId: string; kind: string } };
    expect(status).toMatchObject({ vmId: "vm1", state: "replicating", lastRecoveryPoint: { kind: "initial" } });

    // stderr: one JSON object per line; the initial cycle's bytes grow, then it commits with the disk's size.
    const lines = parseLines(piped.out.stderr);
    const progress = lines.filter((l) => l.event === "progress" && l.kind === "initial");
    expect(progress.length, piped.out.stderr).toBeGreaterThanOrEqual(2);
    const done = progress.map((l) => l.bytesDone!);
    for (let i = 1; i < done.length; i++) expect(done[i]).toBeGreaterThanOrEqual(done[i - 1]!);
    expect(done[0]).toBeLessThan(DISK);
    expect(new Set(done).size).toBeGreaterThanOrEqual(2);
    for (const l of progress) expect(l).toMatchObject({ vm: "vm1", bytesTotal: DISK, bytesPerSecond: expect.any(Number) });
    expect(progress.some((l) => typeof l.etaSeconds === "number")).toBe(true);
    const committed = lines.filter((l) => l.event === "committed");
    expect(committed).toEqual([expect.objectContaining({ kind: "initial", bytesDone: DISK, bytesTotal: DISK, recoveryPointId: status.lastRecoveryPoint.recoveryPointId })]);
    const points = await cliJson<Array<{ recoveryPointId: string; disks: Array<{ virtualSizeBytes: number }> }>>(["points", "vm1", "--dir", t.siteB]);
    expect(points.at(-1)!.disks.reduce((n, d) => n + d.virtualSizeBytes, 0)).toBe(committed[0]!.bytesTotal);

    // On a terminal: a bar (cli-progress) with the cycle, percentage, bytes and ETA; no JSON lines.
    expect(tty.out.stdout).toMatch(/vm1 initial #\d+.*[\u2588\u2591]+.*\d+% .*MiB/);
    expect(tty.out.stdout).toMatch(/ETA /);
    expect(tty.out.stdout).not.toMatch(/"event":/);

    // resync --wait --json: progress lines on stderr end with the resync's commit over the whole disk.
    await randomWrite(t, 8, 4);
    const r = await runCli(["resync", "vm1", "--wait", "--dir", t.siteB, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const resynced = JSON.parse(r.stdout) as { state: string; recoveryPointId: string };
    expect(resynced.state).toBe("replicating");
    const resyncLines = parseLines(r.stderr);
    expect(resyncLines.filter((l) => l.event === "committed")).toEqual([expect.objectContaining({ kind: "resync", bytesTotal: DISK, recoveryPointId: resynced.recoveryPointId })]);
  });
});
