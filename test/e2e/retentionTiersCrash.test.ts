/**
 * Retention tiers with a real site, agent and storage daemons: a site whose tiers thin points in
 * the middle of the chain is killed (SIGKILL through QREPLICA_FAULT) while qemu-img folds a point
 * into the next one, and after the fold but before the ledger records it. After a normal restart
 * every point the ledger lists reads byte for byte as it did, and no image is left over.
 */
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compareImages, convertImage, runTool } from "../../src/qemu/processes/index.js";
import { waitFor, type Daemon } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const setup = twoSitesPerTest();

const diskDir = (t: TwoSites) => join(t.siteB, "storage", "vm1", "vda");

async function expectIdentical(image: string, raw: string, what: string): Promise<void> {
  const cmp = await compareImages(image, raw, { formatA: "qcow2", formatB: "raw" });
  expect(cmp.detail, what).toMatch(/identical/i);
}

describe("retention tiers: a site killed mid-thinning", { timeout: 600_000 }, () => {
  it("killed while qemu-img rebases a point's successor, and before RecoveryPointMerged: every listed point byte-identical after restart", async () => {
    const t = await setup("qr-tiers-crash-", { diskBytes: 32 * MiB, intervalSeconds: 1 });
    // Every point of the last 5 s, the first of each hour, the 2 newest: the points between the
    // hour's first and the last few seconds are thinned, never the base.
    const cfgPath = join(t.siteB, "site.json");
    const cfg = JSON.parse(readFileSync(cfgPath, "utf8")) as Record<string, unknown>;
    cfg.defaultRetention = {
      minPoints: 2,
      tiers: [
        { everySeconds: 0, keepForSeconds: 5 },
        { everySeconds: 3600, keepForSeconds: 86400 },
      ],
    };
    writeFileSync(cfgPath, JSON.stringify(cfg, null, 2), { mode: 0o600 });
    let site: Daemon = await t.startSite(t.siteB);
    await t.vm.guestWrite("vda", ["write -P 0x01 0 2M"]);
    let agent = t.startAgent();
    await waitFor("points thinned by the tiers", async () => ((await t.relationship()).counters.mergesCompleted >= 3 ? true : undefined), 120_000);

    for (const [i, fault] of ["crash-mid-merge", "crash-before-merge-recorded"].entries()) {
      await site.kill("SIGTERM");
      const before = await t.relationship();
      // The site is down: keep what each point is now.
      const copies = new Map<string, string>();
      for (const p of before.points) {
        const raw = join(t.dir, `${fault}-${p.pointId}.raw`);
        await convertImage(p.disks[0]!.imagePath, raw, { srcFormat: "qcow2", dstFormat: "raw" });
        copies.set(p.pointId, raw);
      }
      await t.vm.guestWrite("vda", [`write -P ${0x40 + i} ${8 + i}M 1M`]);
      const expected = join(t.dir, `after-${fault}.raw`);
      await convertImage(t.vm.guestUri("vda"), expected, { srcFormat: "raw", dstFormat: "raw" });
      // The points of the last seconds are old by now: the first commit after the start thins one.
      site = await t.startSite(t.siteB, { env: { QREPLICA_FAULT: fault } });
      await Promise.race([site.exited, new Promise((_, reject) => setTimeout(() => reject(new Error(`the site never reached ${fault}`)), 120_000))]);
      expect(site.child.signalCode).toBe("SIGKILL");
      await agent.kill("SIGTERM");
      const crashed = await t.relationship();
      const merging = crashed.points.find((p) => p.merging);
      expect(merging, `${fault}: the ledger shows a merge under way`).toBeDefined();
      expect(crashed.points.indexOf(merging!), `${fault}: the merge is a thinning, not the oldest`).toBeGreaterThan(0);

      site = await t.startSite(t.siteB);
      const state = await t.relationship();
      expect(state.points.some((p) => p.merging)).toBe(false);
      expect(state.points.map((p) => p.pointId)).not.toContain(merging!.pointId);
      const fresh = state.points.filter((p) => !copies.has(p.pointId));
      // The commit after the write thins; under load a cycle may commit before the one that thins.
      expect(fresh.length, `${fault}: new points after the write`).toBeGreaterThanOrEqual(1);
      for (const p of state.points) {
        const check = await runTool("qemu-img", ["check", "-U", "--output=json", p.disks[0]!.imagePath], { allowExit: [0, 3] });
        const report = JSON.parse(check.stdout) as { corruptions?: number; "check-errors": number };
        expect({ corruptions: report.corruptions ?? 0, errors: report["check-errors"] }, `${fault}: qemu-img check ${p.pointId}`).toEqual({ corruptions: 0, errors: 0 });
        await expectIdentical(p.disks[0]!.imagePath, copies.get(p.pointId) ?? expected, `${fault}: point ${p.pointId}`);
      }
      const onDisk = readdirSync(diskDir(t))
        .filter((f) => f.endsWith(".qcow2"))
        .map((f) => join(diskDir(t), f))
        .sort();
      expect(onDisk).toEqual(state.points.map((p) => p.disks[0]!.imagePath).sort());
      agent = t.startAgent();
      await waitFor(
        "thinning again after the restart",
        async () => ((await t.relationship()).counters.mergesCompleted > state.counters.mergesCompleted ? true : undefined),
        120_000,
      );
    }
  });
});
