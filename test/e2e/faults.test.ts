import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compareImages, convertImage } from "../../src/qemu/processes/index.js";
import { waitFor } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const newTwoSites = twoSitesPerTest();

function tail(path: string, lines = 25): string {
  try {
    return readFileSync(path, "utf8")
      .split("\n")
      .filter((l) => !l.includes('"level":20'))
      .slice(-lines)
      .join("\n");
  } catch {
    return "(no log)";
  }
}

const partials = (t: TwoSites) => {
  const dir = join(t.siteB, "storage", "vm1", "vda");
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(".partial")) : [];
};

async function replicatingWithOnePoint(): Promise<TwoSites> {
  const t = await newTwoSites("qr-fault-", { diskBytes: 256 * MiB, intervalSeconds: 1 });
  await t.startSite(t.siteA);
  await t.startSite(t.siteB);
  await t.vm.guestWrite("vda", ["write -P 0x01 0 4M"]);
  t.startAgent();
  await waitFor("initial replication and one incremental point", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 90_000);
  return t;
}

/** A write of incompressible data, big enough that its cycle takes a while to ship. */
async function bigRandomWrite(t: TwoSites, offsetMiB: number, sizeMiB: number): Promise<number> {
  const file = join(t.dir, "random.bin");
  writeFileSync(file, randomBytes(sizeMiB * MiB));
  await t.vm.guestWrite("vda", [`write -s ${file} ${offsetMiB}M ${sizeMiB}M`]);
  return Date.now();
}

async function expectLatestPointEqualsPrimary(t: TwoSites, after: number) {
  const snapshot = join(t.dir, "primary-now.raw");
  await convertImage(t.vm.guestUri("vda"), snapshot, { srcFormat: "raw", dstFormat: "raw" });
  const point = await waitFor("a point cut after the writes", async () => (await t.relationship()).points.find((p) => Date.parse(p.cutoffAt) > after), 180_000).catch(
    (err: Error) => {
      throw new Error(`${err.message}\n--- agent.log (tail) ---\n${tail(join(t.dir, "agent.log"))}\n--- site-b/site.log (tail) ---\n${tail(join(t.siteB, "site.log"))}`);
    },
  );
  const cmp = await compareImages(point.disks[0]!.imagePath, snapshot, { formatA: "qcow2", formatB: "raw" });
  expect(cmp.detail).toMatch(/identical/i);
}

describe("faults: processes killed for real in the middle of a cycle", { timeout: 360_000 }, () => {
  it("kill -9 of the replica site during a cycle: no partial point; the next cycle delivers the missed changes", async () => {
    const t = await replicatingWithOnePoint();
    const site = t.daemons[1]!;
    const before = (await t.relationship()).points.length;
    const wroteAt = await bigRandomWrite(t, 64, 96);
    await waitFor("the site writing a partial point", () => (partials(t).length > 0 ? true : undefined), 60_000, 20);
    await site.kill("SIGKILL");
    // What the ledger lists is whole; the partial overlay is not a point.
    const state = await t.relationship();
    for (const p of state.points) expect(existsSync(p.disks[0]!.imagePath)).toBe(true);
    expect(state.points.every((p) => Date.parse(p.cutoffAt) < wroteAt)).toBe(true);
    expect(state.points.length).toBeGreaterThanOrEqual(before);

    await t.startSite(t.siteB);
    expect(partials(t)).toEqual([]);
    await t.vm.guestWrite("vda", ["write -P 0x77 10M 1M"]);
    await expectLatestPointEqualsPrimary(t, Date.now());
  });

  it("kill -9 of the agent during a cycle: the restarted agent resends everything not acknowledged", async () => {
    const t = await replicatingWithOnePoint();
    const agent = t.daemons[2]!;
    await bigRandomWrite(t, 32, 96);
    await waitFor("the site writing a partial point", () => (partials(t).length > 0 ? true : undefined), 60_000, 20);
    await agent.kill("SIGKILL");
    await waitFor("the site discarding the partial point", () => (partials(t).length === 0 ? true : undefined), 30_000);
    // The site discards the partial point first and records the failed cycle right after.
    const failed = await waitFor(
      "the site recording the failed cycle",
      async () => {
        const r = await t.relationship();
        return r.counters.cyclesFailed >= 1 ? r : undefined;
      },
      30_000,
    );
    expect(failed.points.every((p) => existsSync(p.disks[0]!.imagePath))).toBe(true);

    t.startAgent();
    await t.vm.guestWrite("vda", ["write -P 0x66 200M 1M"]);
    await expectLatestPointEqualsPrimary(t, Date.now());
  });
});
