import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { makeTmpDir } from "../../../src/common/tmpDir.js";
import { EXPORT_FORMAT, ExportUnusableError, readExportManifest, writeExportManifest, type ExportManifest } from "../../../src/storage/exportManifest.js";
import { hashExportedImage } from "../../../src/storage/initialImages.js";
import { chunkDigest, zeroChunkDigest } from "../../../src/common/chunkDigest.js";
import { createHash } from "node:crypto";

const tmp = makeTmpDir("qr-export-manifest-");
afterAll(() => tmp.cleanup());

const manifest: ExportManifest = {
  format: EXPORT_FORMAT,
  vmId: "web1",
  primarySiteId: "site-a",
  generation: 1,
  cycleSeq: 1,
  cutoffAt: "2026-12-05T06:00:00.000Z",
  consistency: "crash",
  exportedAt: "2026-12-05T06:01:00.000Z",
  disks: [{ diskId: "vda", sizeBytes: 1 << 20, file: "vda.raw", sha256: "a".repeat(64) }],
};

describe("export manifest", () => {
  it("is written owner-only and read back as written", () => {
    writeExportManifest(tmp.path, manifest);
    expect(statSync(join(tmp.path, "manifest.json")).mode & 0o777).toBe(0o600);
    expect(readExportManifest(tmp.path)).toEqual(manifest);
  });

  it("a missing or malformed manifest is EXPORT_UNUSABLE, naming the field; a file name cannot lead out of the directory", () => {
    expect(() => readExportManifest(join(tmp.path, "nowhere"))).toThrow(/manifest\.json cannot be read.*unfinished/);
    const bad = join(tmp.path, "bad");
    for (const [change, field] of [
      [{ generation: 0 }, "generation"],
      [{ disks: [{ ...manifest.disks[0], file: "../etc/passwd.raw" }] }, "disks.0.file"],
      [{ vmId: "../x" }, "vmId"],
    ] as const) {
      writeExportManifest(tmp.path, manifest);
      const raw = { ...manifest, ...change };
      mkdirSync(bad, { recursive: true });
      writeFileSync(join(bad, "manifest.json"), JSON.stringify(raw));
      let err: unknown;
      try {
        readExportManifest(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ExportUnusableError);
      expect((err as ExportUnusableError).code).toBe("EXPORT_UNUSABLE");
      expect((err as Error).message).toContain(field);
    }
    expect(readFileSync(join(tmp.path, "manifest.json"), "utf8")).toContain(EXPORT_FORMAT);
  });

  it("hashExportedImage: the file's SHA-256 and each chunk's digest (zero chunks by the constant)", async () => {
    const chunk = 64 * 1024;
    const data = Buffer.alloc(5 * chunk + 100);
    data.fill(7, chunk, 2 * chunk);
    data.fill(9, 5 * chunk);
    const path = join(tmp.path, "disk.raw");
    writeFileSync(path, data);
    const r = await hashExportedImage(path, chunk, "sha256");
    expect(r.sha256).toBe(createHash("sha256").update(data).digest("hex"));
    expect(r.chunkHashes.length).toBe(6 * 32);
    expect(r.chunkHashes.subarray(0, 32)).toEqual(zeroChunkDigest("sha256", chunk));
    expect(r.chunkHashes.subarray(32, 64)).toEqual(chunkDigest("sha256", data.subarray(chunk, 2 * chunk)));
    expect(r.chunkHashes.subarray(160, 192)).toEqual(chunkDigest("sha256", data.subarray(5 * chunk)));
  });
});
