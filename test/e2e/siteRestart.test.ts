import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readCounters, waitForCounter } from "../../guest/index.js";
import { QmpClient } from "../../src/qemu/qmp/index.js";
import { processAlive, processCommandLine } from "../../src/site/failover/processes.js";
import { waitFor, waitForLogLine, type Daemon, cliJson } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const newTwoSites = twoSitesPerTest();

/** kill -9 of the site process, then a new `site serve` on the same directory. */
async function crashAndRestart(t: TwoSites, site: Daemon, siteDir: string): Promise<Daemon> {
  await site.kill("SIGKILL");
  return t.startSite(siteDir);
}

async function queryStatus(qmpSocket: string): Promise<string> {
  const qmp = await QmpClient.connect({ socketPath: qmpSocket, connectTimeoutMs: 10_000 });
  try {
    return (await qmp.execute<{ status: string }>("query-status")).status;
  } finally {
    await qmp.close();
  }
}

describe("the site supervises its failover VMs and reverse agents across restarts (real processes)", { timeout: 420_000 }, () => {
  it("a site killed and restarted keeps the failover VM (same pid, QMP answers) and its reverse replication (new points on the other site)", async () => {
    const t = await newTwoSites("qr-restart-", { diskBytes: 8 * MiB, intervalSeconds: 1, counterGuest: true });
    await t.startSite(t.siteA);
    let siteB = await t.startSite(t.siteB);
    await waitForCounter(t.guest!.serialLogPath, (v) => v > 3, 90_000);
    const agent = t.startAgent();
    await waitFor("two recovery points", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 120_000);

    // --- unplanned failover: the VM runs on B ---
    await agent.kill("SIGKILL");
    const fo = await cliJson<{ vm: { pid: number; qmpSocket: string; serialLog: string } }>(["failover", "vm1", "--unplanned", "--dir", t.siteB]);
    await waitForCounter(fo.vm.serialLog, () => true, 90_000);

    // --- restart 1, before the reverse: the VM is adopted, not killed; its monitor answers ---
    siteB = await crashAndRestart(t, siteB, t.siteB);
    expect(processAlive(fo.vm.pid)).toBe(true);
    expect(await queryStatus(fo.vm.qmpSocket)).toBe("running");
    const c1 = readCounters(fo.vm.serialLog).at(-1)!;
    await waitForCounter(fo.vm.serialLog, (v) => v > c1, 30_000); // still counting
    await waitForLogLine(join(t.siteB, "site.log"), "failover VM adopted");

    // --- complete and reverse through the CLI, as the README says; the output names the agent's log ---
    await cliJson(["failover", "vm1", "complete", "--dir", t.siteB]);
    await t.guest!.proc.stop();
    const rev = await cliJson<{ agentPid: number; agentLog: string }>(["reverse", "vm1", "--dir", t.siteB, "--to-dir", t.siteA, "--seed", `vda=${t.guest!.diskPath}`]);
    expect(rev.agentLog).toBe(join(t.siteB, "run", "reverse", "vm1", "agent.log"));
    await waitFor("the first reverse point on A", async () => ((await t.relationship("vm1", t.siteA)).points.length > 0 ? true : undefined), 120_000);
    expect(readFileSync(rev.agentLog, "utf8")).toContain("agent started");

    // --- restart 2, reverse agent active: VM and agent run on, and the reverse replication goes on ---
    siteB = await crashAndRestart(t, siteB, t.siteB);
    expect(processAlive(fo.vm.pid)).toBe(true);
    expect(processCommandLine(fo.vm.pid)).toContain(fo.vm.qmpSocket);
    expect(processAlive(rev.agentPid)).toBe(true);
    await waitForLogLine(join(t.siteB, "site.log"), "reverse replication agent adopted");
    const seqA = (await t.relationship("vm1", t.siteA)).lastCycleSeq;
    await waitFor("new reverse points on A after the restart", async () => ((await t.relationship("vm1", t.siteA)).lastCycleSeq >= seqA + 2 ? true : undefined), 90_000);

    // --- the reverse agent dies: the site restarts it, and points keep arriving ---
    process.kill(rev.agentPid, "SIGKILL");
    const agentPidFile = join(t.siteB, "run", "reverse", "vm1", "agent.pid");
    const newPid = await waitFor(
      "the reverse agent restarted by the site",
      () => {
        const pid = Number(readFileSync(agentPidFile, "utf8"));
        return pid !== rev.agentPid && processAlive(pid) ? pid : undefined;
      },
      30_000,
    );
    expect(newPid).not.toBe(rev.agentPid);
    const seqA2 = (await t.relationship("vm1", t.siteA)).lastCycleSeq;
    await waitFor("reverse points from the restarted agent", async () => ((await t.relationship("vm1", t.siteA)).lastCycleSeq >= seqA2 + 2 ? true : undefined), 90_000);
    expect(processAlive(fo.vm.pid)).toBe(true);

    // --- the reverse agent dies while the site is down: the site's next start runs it again ---
    await siteB.kill("SIGKILL");
    process.kill(newPid, "SIGKILL");
    await waitFor("the reverse agent gone", () => (processAlive(newPid) ? undefined : true), 10_000, 20);
    siteB = await t.startSite(t.siteB);
    const thirdPid = await waitFor(
      "the reverse agent started again by the restarted site",
      () => {
        const pid = Number(readFileSync(agentPidFile, "utf8"));
        return pid !== newPid && processAlive(pid) ? pid : undefined;
      },
      60_000,
    );
    expect(thirdPid).not.toBe(rev.agentPid);
    const seqA3 = (await t.relationship("vm1", t.siteA)).lastCycleSeq;
    await waitFor("reverse points after the agent ran again", async () => ((await t.relationship("vm1", t.siteA)).lastCycleSeq >= seqA3 + 2 ? true : undefined), 90_000);
    expect(processAlive(fo.vm.pid)).toBe(true);
    void siteB;
  });
});
