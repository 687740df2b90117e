/**
 * Faults during a planned failover: the replica site killed with SIGKILL while the primary is being
 * stopped, and once it has stopped. Either way the operator ends with one VM running on B from a
 * point holding every write of the stopped primary (zero data loss), one primary in the
 * generation, and each failed step said what to do next.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { readCounters, readDiskCounter, waitForCounter } from "../../guest/index.js";
import { compareImages } from "../../src/qemu/processes/index.js";
import { cliJson, runCli, waitFor } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const newTwoSites = twoSitesPerTest();

interface FailoverOut {
  recoveryPointId: string;
  generation: number;
  vm: { serialLog: string };
}

async function replicatingCounterGuest(): Promise<TwoSites> {
  const t = await newTwoSites("qr-fofault-", { diskBytes: 8 * MiB, intervalSeconds: 1, counterGuest: true });
  await t.startSite(t.siteA);
  await t.startSite(t.siteB);
  await waitForCounter(t.guest!.serialLogPath, (v) => v > 3, 90_000);
  t.startAgent();
  await waitFor("two recovery points", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 120_000);
  return t;
}

describe("faults during a planned failover (counter guest, real processes)", { timeout: 420_000 }, () => {
  it("site B killed once the primary stopped: restarted, it runs the VM from the final point (zero data loss), failing over anew if it had not recorded it", async () => {
    const t = await replicatingCounterGuest();
    const planned = runCli(["failover", "vm1", "--planned", "--dir", t.siteB, "--json"]);
    // The agent quits the primary's QEMU right after the site heard of its final cycle.
    await t.guest!.proc.exited;
    await t.daemons[1]!.kill("SIGKILL");
    await planned;
    await t.startSite(t.siteB);

    if ((await t.relationship()).generation === 1) {
      // Killed before the failover was recorded. The primary's agent is done: a second planned
      // failover cannot stop it again, and says what to use instead.
      const again = await runCli(["failover", "vm1", "--planned", "--dir", t.siteB, "--json"]);
      expect(again.code).not.toBe(0);
      expect(again.stdout + again.stderr).toMatch(/--unplanned/);
      await cliJson<FailoverOut>(["failover", "vm1", "--unplanned", "--dir", t.siteB]);
    }
    // Else recorded: the VM outlived the site, or the restarted site started it again (killed mid-launch).
    const state = await t.relationship();
    expect(state.generation).toBe(2);
    expect(state.state).toBe("failed-over-waiting-completion");
    const point = state.points.find((p) => p.pointId === state.failover?.pointId)!;
    // Zero data loss: the failover point holds the stopped primary's disk, byte for byte.
    expect((await compareImages(point.disks[0]!.imagePath, t.guest!.diskPath, { formatA: "qcow2", formatB: "qcow2" })).detail).toMatch(/identical/i);
    const record = join(t.siteB, "run", "failover", "vm1", "g2", "vm.json");
    const serialLog = await waitFor(
      "the failover VM recorded on B",
      () => (existsSync(record) ? (JSON.parse(readFileSync(record, "utf8")) as { serialLogPath: string }).serialLogPath : undefined),
      60_000,
    );
    const finalOnPrimary = await readDiskCounter(t.guest!.diskPath);
    await waitForCounter(serialLog, (v) => v > finalOnPrimary, 90_000);
    // A VM launched, killed with the site and started again boots on what the first run wrote.
    expect(readCounters(serialLog)[0]).toBeGreaterThanOrEqual(finalOnPrimary);
  });

  it("site B killed while the primary is being stopped: the primary runs on, and the planned failover run again loses nothing", async () => {
    const t = await replicatingCounterGuest();
    const planned = runCli(["failover", "vm1", "--planned", "--dir", t.siteB, "--json"]);
    // The counter guest ignores ACPI power-down: the agent waits out the power-down timeout (10 s).
    await waitFor("the agent powering the primary down", () => (agentLog(t).includes("planned failover requested") ? true : undefined), 30_000, 50);
    await sleep(500);
    await t.daemons[1]!.kill("SIGKILL");
    const out = await planned;
    expect(out.code).not.toBe(0);
    await t.startSite(t.siteB);
    // The failover did not happen: production must not stay paused because of it (the counter goes on).
    await waitFor("the agent giving the planned failover up", () => (agentLog(t).includes("planned failover aborted") ? true : undefined), 60_000, 100);
    expect(agentLog(t)).toMatch(/planned failover aborted[^"]*: the VM was resumed/);
    const atAbort = readCounters(t.guest!.serialLogPath).at(-1)!;
    await waitForCounter(t.guest!.serialLogPath, (v) => v > atAbort + 2, 90_000);
    expect((await t.relationship()).generation).toBe(1);

    const fo = await cliJson<FailoverOut>(["failover", "vm1", "--planned", "--dir", t.siteB]);
    await t.guest!.proc.exited;
    const finalOnPrimary = await readDiskCounter(t.guest!.diskPath);
    await waitForCounter(fo.vm.serialLog, () => true, 90_000);
    expect(readCounters(fo.vm.serialLog)[0]).toBe(finalOnPrimary);
    expect(fo.generation).toBe(2);
  });

  it("site B killed right after starting the failover VM, before recording it: restarted, it replaces the stray QEMU and runs the VM", async () => {
    const t = await replicatingCounterGuest();
    await t.daemons[1]!.kill("SIGTERM");
    const siteB = await t.startSite(t.siteB, { env: { QREPLICA_FAULT: "crash-mid-failover-launch" } });
    const out = await runCli(["failover", "vm1", "--unplanned", "--dir", t.siteB, "--json"]);
    expect(out.code).not.toBe(0);
    await siteB.exited;
    const g2 = join(t.siteB, "run", "failover", "vm1", "g2");
    const strays = qemuUnder(g2);
    expect(strays).toHaveLength(1);
    expect(existsSync(join(g2, "vm.json"))).toBe(false);

    await t.startSite(t.siteB);
    const record = await waitFor(
      "the failover VM recorded again",
      () => (existsSync(join(g2, "vm.json")) ? (JSON.parse(readFileSync(join(g2, "vm.json"), "utf8")) as { pid: number; serialLogPath: string }) : undefined),
      60_000,
    );
    expect(strays).not.toContain(record.pid);
    expect(qemuUnder(g2)).toEqual([record.pid]);
    const state = await t.relationship();
    expect(state.state).toBe("failed-over-waiting-completion");
    await waitForCounter(record.serialLogPath, (v) => v > 0, 90_000);
    expect(readFileSync(join(t.siteB, "site.log"), "utf8")).toMatch(/the failover VM was not running after the site restart/);
  });
});

function agentLog(t: TwoSites): string {
  return readFileSync(join(t.dir, "agent.log"), "utf8");
}

/** QEMU processes whose command line names `dir`. */
function qemuUnder(dir: string): number[] {
  return readdirSync("/proc")
    .filter((n) => /^\d+$/.test(n))
    .map(Number)
    .filter((pid) => {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
        return cmd.includes("qemu-system") && cmd.includes(`${dir}/`);
      } catch {
        return false;
      }
    });
}
