import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compareImages, convertImage } from "../../src/qemu/processes/index.js";
import { waitFor } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const newTwoSites = twoSitesPerTest();

/** Writes a batch, then snapshots the primary while nothing writes, stamped with when that quiet window began. */
async function writeAndSnapshot(t: TwoSites, k: number, commands: string[]) {
  const startedAt = Date.now();
  await t.vm.guestWrite("vda", commands);
  const doneAt = Date.now();
  const snapshot = join(t.dir, `primary-${k}.raw`);
  await convertImage(t.vm.guestUri("vda"), snapshot, { srcFormat: "raw", dstFormat: "raw" });
  return { k, startedAt, doneAt, snapshot };
}

describe("two sites, one agent, one VM (separate processes, mutual TLS)", () => {
  it("every committed point is byte-identical to the primary at its cut-off", async () => {
    const t = await newTwoSites("qr-e2e-", { diskBytes: 64 * MiB, intervalSeconds: 1 });
    await t.startSite(t.siteA);
    await t.startSite(t.siteB);
    const batches = [await writeAndSnapshot(t, 0, ["write -P 0x10 0 8M", "write -P 0x11 40M 1M"])];
    const agent = t.startAgent();
    for (let k = 1; k <= 6; k++) {
      const previous = batches[batches.length - 1]!;
      // A point cut after the previous batch must exist before the next batch starts.
      await waitFor(
        `a point cut after batch ${k - 1}`,
        async () => {
          const s = await t.relationship();
          return s.points.some((p) => Date.parse(p.cutoffAt) > previous.doneAt) ? true : undefined;
        },
        90_000,
      );
      batches.push(await writeAndSnapshot(t, k, [`write -P ${0x20 + k} ${k * 3}M 1M`, `write -z ${k * 5}M 64k`, `write -P ${0x30 + k} ${50 + k}M 128k`]));
    }
    const last = batches[batches.length - 1]!;
    await waitFor("a point after the last batch", async () => ((await t.relationship()).points.some((p) => Date.parse(p.cutoffAt) > last.doneAt) ? true : undefined), 90_000);

    const state = await t.relationship();
    expect(state.state).toBe("replicating");
    let verified = 0;
    for (const point of state.points) {
      const cutoff = Date.parse(point.cutoffAt);
      // The batch whose quiet window contains the cut-off is the primary's content at that cut-off.
      const batch = [...batches].reverse().find((b) => b.doneAt < cutoff);
      const next = batches.find((b) => b.k === (batch?.k ?? -1) + 1);
      if (!batch || (next && cutoff >= next.startedAt)) continue;
      const image = point.disks[0]!.imagePath;
      const cmp = await compareImages(image, batch.snapshot, { formatA: "qcow2", formatB: "raw" });
      expect(cmp.detail, `${point.pointId} (cut-off ${point.cutoffAt}) vs batch ${batch.k}`).toMatch(/identical/i);
      verified++;
    }
    expect(verified).toBeGreaterThanOrEqual(6);
    expect(state.points.length).toBeGreaterThanOrEqual(7);
    // Nothing partial is left in the replica's storage. The agent cycles every second, so the
    // cycle in flight has its .partial until it commits: stop the agent, whose open cycle the site
    // then discards, and wait for that.
    await agent.kill("SIGTERM");
    const partials = () => readdirSync(join(t.siteB, "storage", "vm1", "vda")).filter((f) => f.endsWith(".partial"));
    await waitFor("the aborted cycle's .partial to be discarded", () => (partials().length === 0 ? true : undefined), 60_000).catch(() => undefined);
    expect(partials()).toEqual([]);
    expect(existsSync(join(t.siteB, "storage", "vm1", "vda", "base.qcow2"))).toBe(true);
  });
});
