/**
 * Found by the fault campaign: a kill -9 of the replica site's qemu-storage-daemon left the site
 * serving while every cycle failed, for good. The site now stops (exit 70) and says what happened
 * and what to run; started again, it replicates and the next point equals the primary.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compareImages, convertImage } from "../../src/qemu/processes/index.js";
import { waitFor } from "../helpers/processes.js";
import { twoSitesPerTest } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const newTwoSites = twoSitesPerTest();

describe("the replica site's storage daemon dies", { timeout: 240_000 }, () => {
  it("the site stops with exit 70 and a message naming the fix; restarted, it catches up", async () => {
    const t = await newTwoSites("qr-qsd-exit-", { diskBytes: 64 * MiB, intervalSeconds: 1 });
    const site = await t.startSite(t.siteB);
    await t.vm.guestWrite("vda", ["write -P 0x11 0 2M"]);
    t.startAgent();
    await waitFor("two points", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 90_000);

    const pid = Number(readFileSync(join(t.siteB, "run", "storage-daemon.pid"), "utf8").trim());
    process.kill(pid, "SIGKILL");
    const code = await Promise.race([site.exited, new Promise<string>((r) => setTimeout(() => r("still running"), 30_000))]);
    expect(code).toBe(70);
    const fatal = readFileSync(join(t.siteB, "site.log"), "utf8")
      .split("\n")
      .find((l) => l.includes("STORAGE_DAEMON_EXITED"));
    expect(JSON.parse(fatal!)).toMatchObject({ level: 60, msg: expect.stringContaining(`qemu-storage-daemon (pid ${pid}) exited (SIGKILL)`) });
    expect(JSON.parse(fatal!).msg).toContain(`qreplica site serve --dir ${t.siteB}`);

    await t.startSite(t.siteB);
    await t.vm.guestWrite("vda", ["write -P 0x22 8M 1M"]);
    const wroteAt = Date.now();
    const point = await waitFor("a point cut after the write", async () => (await t.relationship()).points.find((p) => Date.parse(p.cutoffAt) > wroteAt), 90_000);
    const snapshot = join(t.dir, "primary.raw");
    await convertImage(t.vm.guestUri("vda"), snapshot, { srcFormat: "raw", dstFormat: "raw" });
    expect((await compareImages(point.disks[0]!.imagePath, snapshot, { formatA: "qcow2", formatB: "raw" })).detail).toMatch(/identical/i);
  });
});
