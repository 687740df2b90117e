/**
 * Issue 8, item 8: unplanned failover, complete, reverse replication and failback of the counter
 * guest, driven only by the README's `qreplica` commands (each a CLI process), with the guest's
 * counter proving which point every VM booted from.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it, onTestFinished } from "vitest";
import { readCounters, readDiskCounter, waitForCounter } from "../../guest/index.js";
import { QmpClient } from "../../src/qemu/qmp/index.js";
import { runCli, waitFor } from "../helpers/processes.js";
import { twoSitesPerTest } from "../helpers/twoSites.js";
import { offenders } from "../helpers/dataAtRest.js";

const MiB = 1024 * 1024;
const newTwoSites = twoSitesPerTest();

async function qreplica<T>(args: string[]): Promise<T> {
  const r = await runCli([...args, "--json"]);
  if (r.code !== 0) throw new Error(`qreplica ${args.join(" ")} failed (${r.code}): ${r.stdout}${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

interface Point {
  recoveryPointId: string;
  sequence: number;
}
interface Status {
  relationships: Array<{ state: string; generation: number }>;
}

describe("reverse replication and failback through the CLI, as the README documents them", { timeout: 600_000 }, () => {
  it("unplanned failover, complete, reverse onto the old disk, failback: each VM boots from its point", async () => {
    // Every process starts with umask 022, as from a usual login shell: nothing the failover, the
    // reverse (its agent's state, the seed taken in) or the failback writes may be readable by others.
    const savedUmask = process.umask(0o022);
    onTestFinished(() => {
      process.umask(savedUmask);
    });
    const t = await newTwoSites("qr-revcli-", { diskBytes: 8 * MiB, intervalSeconds: 1, counterGuest: true });
    const guest = t.guest!;
    const exposed = new Set<string>();
    const checkDataAtRest = () => {
      for (const o of [t.siteA, t.siteB, join(t.dir, "agent-state")].flatMap(offenders)) exposed.add(o);
    };
    await t.startSite(t.siteA);
    await t.startSite(t.siteB);
    await waitForCounter(guest.serialLogPath, (v) => v > 5, 90_000);
    const agent = t.startAgent();
    // Until the agent's Hello the site knows no vm1 (NOT_FOUND): read the ledger, not the CLI.
    await waitFor("three recovery points on B", async () => ((await t.relationship()).points.length >= 3 ? true : undefined), 120_000);

    // --- disaster: site A's agent is gone; fail over to B's latest point ---
    await agent.kill("SIGKILL");
    const fo = await qreplica<{ recoveryPointId: string; generation: number; vm: { serialLog: string } }>(["failover", "vm1", "--unplanned", "--dir", t.siteB]);
    expect(fo.generation).toBe(2);
    const pointImage = (await t.relationship()).points.find((p) => p.pointId === fo.recoveryPointId)!.disks[0]!.imagePath;
    const pointCounter = await readDiskCounter(pointImage);
    await waitForCounter(fo.vm.serialLog, () => true, 90_000);
    expect(readCounters(fo.vm.serialLog)[0]).toBe(pointCounter);
    checkDataAtRest(); // the failover VM runs on its overlays
    await qreplica(["failover", "vm1", "complete", "--dir", t.siteB]);

    // The old primary comes back: its agent is refused as stale and pauses the VM (still running).
    const returned = t.startAgent();
    await waitFor(
      "the old primary's agent refused as stale",
      async () => {
        const events = await qreplica<{ events: Array<{ type: string }> }>(["events", "vm1", "--dir", t.siteB, "--all"]);
        return events.events.some((e) => e.type === "StaleGenerationRefused") ? true : undefined;
      },
      90_000,
    );
    await returned.exited; // it fenced its VM and stopped; the monitor is free again
    const qmp = await QmpClient.connect({ socketPath: guest.qmpSocketPath });
    expect((await qmp.execute<{ status: string }>("query-status")).status).toBe("paused");

    // --- reverse while the old VM still holds its disk: refused, saying what to do ---
    const blocked = await runCli(["reverse", "vm1", "--dir", t.siteB, "--to-dir", t.siteA, "--seed", `vda=${guest.diskPath}`]);
    expect(blocked.code).not.toBe(0);
    expect(blocked.stderr).toContain(guest.diskPath);
    expect(blocked.stderr).toMatch(/in use/);
    expect((await qreplica<Status>(["status", "--dir", t.siteB])).relationships[0]!.generation).toBe(2);

    // The operator shuts the old VM down (its disk is the seed), then reverses as the README says.
    await qmp.execute("quit").catch(() => undefined);
    await qmp.close();
    await guest.proc.exited;
    const oldDiskCounter = await readDiskCounter(guest.diskPath);
    // --wait: until site A has the seeded first point (progress on stderr, the result on stdout).
    const reverse = await qreplica<{ agentPid: number; generation: number; recoveryPointId: string }>([
      "reverse",
      "vm1",
      "--dir",
      t.siteB,
      "--to-dir",
      t.siteA,
      "--seed",
      `vda=${guest.diskPath}`,
      "--wait",
    ]);
    expect(reverse.generation).toBe(2);
    expect((await qreplica<Point[]>(["points", "vm1", "--dir", t.siteA]))[0]!.recoveryPointId).toBe(reverse.recoveryPointId);
    const reversed = await waitFor(
      "two reverse points on A",
      async () => {
        const points = await qreplica<Point[]>(["points", "vm1", "--dir", t.siteA]);
        return points.length >= 2 ? points : undefined;
      },
      180_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n--- site-a.log ---\n${readFileSync(join(t.siteA, "site.log"), "utf8").split("\n").slice(-20).join("\n")}`);
    });
    checkDataAtRest(); // the reverse agent runs, its seed taken in on A
    const first = (await t.relationship("vm1", t.siteA)).points.find((p) => p.pointId === reversed[0]!.recoveryPointId)!;
    // The VM on B ran on from the point: A's first reverse point is past both the point and the old disk's counter... of B's VM.
    expect(await readDiskCounter(first.disks[0]!.imagePath)).toBeGreaterThanOrEqual(pointCounter);
    expect(oldDiskCounter).toBeGreaterThan(0);

    // --- failback: a planned failover on A; the reverse agent stops B's VM and ships its last changes ---
    const back = await qreplica<{ recoveryPointId: string; generation: number; vm: { serialLog: string } }>(["failover", "vm1", "--planned", "--dir", t.siteA]);
    expect(back.generation).toBe(3);
    const finalImage = (await t.relationship("vm1", t.siteA)).points.find((p) => p.pointId === back.recoveryPointId)!.disks[0]!.imagePath;
    const finalCounter = await readDiskCounter(finalImage);
    await waitForCounter(back.vm.serialLog, () => true, 90_000);
    // Zero data loss: A's VM starts where B's stopped VM ended, which is the final point.
    expect(readCounters(back.vm.serialLog)[0]).toBe(finalCounter);
    expect(finalCounter).toBeGreaterThanOrEqual(readCounters(fo.vm.serialLog).at(-1)!);
    expect((await qreplica<Status>(["status", "vm1", "--dir", t.siteA])).relationships[0]!.generation).toBe(3);
    checkDataAtRest(); // the failback VM runs on A
    expect([...exposed]).toEqual([]);
  });
});
