import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { SiteStorageDaemon } from "../../../src/storage/index.js";
import { createImage } from "../../../src/qemu/processes/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe("site storage daemon write modes", () => {
  it("opens point images with direct I/O where the storage allows it; a missing image fails without degrading the mode", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const daemon = await SiteStorageDaemon.start(join(tmp.path, "run"));
    cleanups.push(() => daemon.stop());
    const a = join(tmp.path, "a.qcow2");
    const b = join(tmp.path, "b.qcow2");
    await createImage(a, 1024 * 1024);
    await createImage(b, 1024 * 1024);

    const first = await daemon.addWritableImage("na", a);
    // Which mode depends on the kernel and file system; say it, so a slow CI run can be explained.
    console.log(`point images on ${tmp.path} are written with: ${first.mode}`);
    expect(["direct+io_uring", "direct+native", "page cache"]).toContain(first.mode);

    await expect(daemon.addWritableImage("nmissing", join(tmp.path, "missing.qcow2"))).rejects.toThrow(/No such file/);
    expect((await daemon.addWritableImage("nb", b)).mode).toBe(first.mode);
    const nodes = await daemon.qmp.execute<Array<{ "node-name": string; cache: { direct: boolean } }>>("query-named-block-nodes", { flat: true });
    const nb = nodes.find((n) => n["node-name"] === "nb");
    expect(nb?.cache.direct).toBe(first.mode !== "page cache");
  });
});
