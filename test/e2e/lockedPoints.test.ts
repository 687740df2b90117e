/**
 * Locked points (issue 13): a policy's lock period keeps every point it covers, against retention
 * and against an admin completing a failover; the refusal names the lock and when it ends.
 * Real processes: two sites, the agent, a qemu-storage-daemon VM; the CLI as the site's admin.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { cliJson, runCli, waitFor } from "../helpers/processes.js";
import { twoSitesPerTest } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const setup = twoSitesPerTest();

type WirePoint = { recoveryPointId: string; sequence: number; cutoffTime: string; lockedUntil?: string };

describe("locked points", { timeout: 360_000 }, () => {
  it("retention keeps locked points under a stricter policy, and an admin cannot complete a failover that would drop them", async () => {
    const t = await setup("qr-locked-", { diskBytes: 8 * MiB, intervalSeconds: 3600 });
    const site = ["--dir", t.siteB];
    await t.startSite(t.siteB);
    const file = join(t.dir, "locked.yaml");
    writeFileSync(file, "name: locked\nfrequency: 1s\nretention: { minPoints: 1, lockFor: 1h }\n");
    await cliJson(["policy", "apply", file, ...site]);
    await t.vm.guestWrite("vda", ["write -P 0x11 0 1M"]);
    const agent = t.startAgent({ policy: "locked" });
    const lastSeq = async () => (await t.relationship()).lastCycleSeq;
    await waitFor("four cycles", async () => ((await lastSeq()) >= 4 ? true : undefined), 90_000);

    // minPoints 1 would keep only the newest: the lock keeps them all, each locked an hour past its cut-off.
    const locked = await cliJson<WirePoint[]>(["points", "vm1", ...site]);
    expect(locked.length).toBeGreaterThanOrEqual(4);
    expect((await t.relationship()).counters.mergesCompleted).toBe(0);
    for (const p of locked) expect(Date.parse(p.lockedUntil!) - Date.parse(p.cutoffTime)).toBe(3_600_000);
    const table = await runCli(["points", "vm1", ...site]);
    expect(table.stdout).toContain(`locked until ${locked[0]!.lockedUntil}`);

    // The admin drops the lock from the policy: new points are thinned, the locked ones stay.
    writeFileSync(file, "name: locked\nfrequency: 1s\nretention: { minPoints: 1 }\n");
    await cliJson(["policy", "apply", file, ...site]);
    const from = await lastSeq();
    await waitFor("three more cycles", async () => ((await lastSeq()) >= from + 3 ? true : undefined), 90_000);
    const lockedIds = locked.map((p) => p.recoveryPointId);
    await waitFor(
      "the unlocked points thinned around the locked ones",
      async () => {
        // Points cut between the listing above and the new policy are locked too.
        const now = await cliJson<WirePoint[]>(["points", "vm1", ...site]);
        const unlocked = now.filter((p) => p.lockedUntil === undefined);
        return unlocked.length === 1 && unlocked[0]!.sequence > from + 1 ? now : undefined;
      },
      120_000,
    );
    const kept = (await t.relationship()).points.map((p) => p.pointId);
    expect(kept).toEqual(expect.arrayContaining(lockedIds));

    // A failover to the newest point; completing it would drop the locked ones: refused, for the admin too.
    await agent.kill("SIGKILL");
    const fo = await cliJson<{ recoveryPointId: string }>(["failover", "vm1", "--unplanned", "--no-start", ...site]);
    const refused = await runCli(["failover", "vm1", "complete", ...site, "--json"]);
    expect(refused.code).not.toBe(0);
    const error = (JSON.parse(refused.stdout) as { error: { code: string; message: string } }).error;
    expect(error.code).toBe("FAILED_PRECONDITION");
    expect(error.message).toContain("completing the failover would remove locked recovery point(s)");
    for (const p of locked) expect(error.message).toContain(`${p.recoveryPointId} until ${p.lockedUntil}`);
    const state = await t.relationship();
    expect(state.state).toBe("failed-over-waiting-completion");
    expect(state.points.map((p) => p.pointId)).toEqual(expect.arrayContaining([...lockedIds, fo.recoveryPointId]));
    const events = await cliJson<{ events: Array<{ type: string }> }>(["events", "vm1", "--all", ...site]);
    expect(events.events.map((e) => e.type)).not.toContain("FailoverCompleted");
    // Cancelling drops nothing and is allowed.
    await cliJson(["failover", "vm1", "cancel", ...site]);
    expect((await t.relationship()).points.map((p) => p.pointId)).toEqual(expect.arrayContaining(lockedIds));
  });
});
