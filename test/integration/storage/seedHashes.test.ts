import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { chunkHashes, SiteStorageDaemon } from "../../../src/storage/index.js";
import { convertImage, runTool } from "../../../src/qemu/processes/index.js";
import { knownZeroChunks, NbdClient, BASE_ALLOCATION_CONTEXT } from "../../../src/qemu/nbd/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";
import { startQsd } from "../nbd/qsd.js";

const KiB = 1024;
const CHUNK = 64 * KiB;
// Not a multiple of the chunk: the last chunk is short.
const SIZE = 2 * 1024 * KiB + 12 * KiB;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * A base with data, written zeroes, data that happens to be zero and unallocated runs, and an
 * overlay that puts data over zeroes and zeroes over data (chunk-aligned and not).
 */
async function chain(dir: string): Promise<string> {
  const base = join(dir, "base.qcow2");
  const top = join(dir, "top.qcow2");
  await runTool("qemu-img", ["create", "-q", "-f", "qcow2", base, String(SIZE)]);
  const io = (img: string, cmds: string[]) => runTool("qemu-io", ["-f", "qcow2", img, ...cmds.flatMap((c) => ["-c", c])]);
  await io(base, [
    `write -P 0x11 0 ${CHUNK}`,
    `write -z ${2 * CHUNK} ${2 * CHUNK}`,
    `write -P 0 ${5 * CHUNK} ${CHUNK}`,
    `write -P 0x22 ${7 * CHUNK + 4 * KiB} ${8 * KiB}`,
    `write -P 0x33 ${SIZE - 4 * KiB} ${4 * KiB}`,
  ]);
  await runTool("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top]);
  await io(top, [`write -z 0 ${CHUNK}`, `write -P 0x44 ${3 * CHUNK + 512} 512`, `write -z ${7 * CHUNK} ${16 * KiB}`, `write -P 0x55 ${10 * CHUNK} ${CHUNK}`]);
  return top;
}

function expectedHashes(raw: Buffer): string[] {
  const out: string[] = [];
  for (let at = 0; at < raw.length; at += CHUNK)
    out.push(
      createHash("sha256")
        .update(raw.subarray(at, Math.min(at + CHUNK, raw.length)))
        .digest("hex"),
    );
  return out;
}

describe("resync chunk hashes skip what the chain reports as zeroes", () => {
  it("every chunk's hash equals the SHA-256 of the image's bytes, skipped or not", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const top = await chain(tmp.path);
    await convertImage(top, join(tmp.path, "top.raw"), { dstFormat: "raw" });
    const raw = readFileSync(join(tmp.path, "top.raw"));
    expect(raw.length).toBe(SIZE);

    const daemon = await SiteStorageDaemon.start(join(tmp.path, "run"));
    cleanups.push(() => daemon.stop());
    const got: string[] = [];
    for await (const h of chunkHashes(daemon, top, CHUNK)) got.push(h.toString("hex"));
    expect(got).toEqual(expectedHashes(raw));
  });

  it("marks exactly the chunks wholly inside zero runs, and those read as zeroes", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const top = await chain(tmp.path);
    const qsd = await startQsd({ dir: tmp.path, image: top, exports: [{ id: "e", name: "e", writable: false }], readOnlyImage: true });
    cleanups.push(() => qsd.stop());
    const client = await NbdClient.connect({ socketPath: qsd.nbdSocket, exportName: "e", metaContexts: [BASE_ALLOCATION_CONTEXT] });
    cleanups.push(() => client.disconnect());
    const zero = await knownZeroChunks(client, CHUNK);
    expect(zero).toBeDefined();
    const marked = [...zero!].flatMap((z, i) => (z === 1 ? [i] : []));
    for (const i of marked) {
      const data = await client.read(i * CHUNK, Math.min(CHUNK, SIZE - i * CHUNK));
      expect(data.every((b) => b === 0)).toBe(true);
    }
    // Zeroed over data (0), unallocated (1, 4, 6, 8, 9), written zeroes (2) are skipped; partly
    // overwritten (3, 7), data that happens to be zero (5), data (10) and the short last chunk
    // holding data are read.
    for (const i of [0, 1, 2, 4, 6, 8, 9]) expect(marked).toContain(i);
    for (const i of [3, 5, 7, 10, Math.floor(SIZE / CHUNK)]) expect(marked).not.toContain(i);
    // Without base:allocation nothing is known.
    const plain = await NbdClient.connect({ socketPath: qsd.nbdSocket, exportName: "e" });
    cleanups.push(() => plain.disconnect());
    expect(await knownZeroChunks(plain, CHUNK)).toBeUndefined();
  });
});
