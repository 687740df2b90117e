import { createHash, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { hashChunks } from "../../../src/common/hashPool.js";

const sha = (b: Buffer) => createHash("sha256").update(b).digest();

describe("hashChunks (SHA-256 in worker threads)", () => {
  it("gives each chunk's SHA-256, a short last chunk included, and hands the same bytes back", async () => {
    const chunk = 64 * 1024;
    const memory = Buffer.allocUnsafeSlow(16 * chunk);
    randomBytes(16 * chunk).copy(memory);
    const length = 3 * chunk + 1000;
    const copy = Buffer.from(memory.subarray(0, length));
    const r = await hashChunks(memory.buffer as ArrayBuffer, length, chunk);
    expect(memory.length).toBe(0); // detached: the bytes moved to the worker, not copied
    expect(r.data.equals(copy)).toBe(true);
    expect(r.data.buffer.byteLength).toBe(16 * chunk);
    expect(r.hashes.map((h) => h.toString("hex"))).toEqual([0, 1, 2, 3].map((i) => sha(copy.subarray(i * chunk, Math.min((i + 1) * chunk, length))).toString("hex")));
  });

  it("keeps many concurrent jobs apart", async () => {
    const inputs = Array.from({ length: 40 }, (_, i) => randomBytes(4096 + i * 512));
    const results = await Promise.all(
      inputs.map((b) => {
        const own = new Uint8Array(b).buffer;
        return hashChunks(own, b.length, 4096);
      }),
    );
    results.forEach((r, i) => {
      const b = inputs[i]!;
      expect(r.data.equals(b)).toBe(true);
      const expected: string[] = [];
      for (let at = 0; at < b.length; at += 4096) expected.push(sha(b.subarray(at, at + 4096)).toString("hex"));
      expect(r.hashes.map((h) => h.toString("hex"))).toEqual(expected);
    });
  });
});
