/**
 * Found by the fault campaign: a replica storage that fills up failed the cycle with "write
 * failed" and nothing else. The failure now says the file system is full and what to do.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DiskPointWriter, SiteStorageDaemon } from "../../../src/storage/index.js";
import { createImage } from "../../../src/qemu/processes/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe("a replica storage that fills up", () => {
  it.skipIf(process.getuid?.() !== 0)("fails the point with ENOSPC named and the fix, not a bare 'write failed'", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const storage = join(tmp.path, "storage");
    mkdirSync(storage);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", storage]);
    cleanups.push(() => execFileSync("umount", ["-l", storage]));
    const daemon = await SiteStorageDaemon.start(join(tmp.path, "run"));
    cleanups.push(() => daemon.stop());
    const image = join(storage, "rp-00000001.qcow2.partial");
    await createImage(image, 64 * MiB);

    const writer = await DiskPointWriter.open(daemon, { vmId: "vm1", diskId: "vda", seq: 1, imagePath: image, sizeBytes: 64 * MiB });
    const data = randomBytes(16 * MiB);
    const written = (async () => {
      await writer.write(0, data);
      return writer.finish();
    })();
    await expect(written).rejects.toMatchObject({
      code: "STORAGE_WRITE_FAILED",
      message: expect.stringMatching(new RegExp(`failed: the file system holding ${storage} is full \\(ENOSPC\\); free space there or move the site's storageRoot`)),
    });
    await writer.close();
  });
});
