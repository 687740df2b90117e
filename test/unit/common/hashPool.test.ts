import { createHash, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { hashChunks, hashThreads, setHashWorkerIdleMs } from "../../../src/common/hashPool.js";
import { waitFor } from "../../helpers/processes.js";

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

  it("hashes zero chunks (compared, not hashed) to SHA-256 of zeroes, among data chunks", async () => {
    const chunk = 64 * 1024;
    const b = Buffer.concat([Buffer.alloc(chunk), randomBytes(chunk), Buffer.alloc(chunk), Buffer.alloc(chunk - 1, 0).fill(1, chunk - 2), Buffer.alloc(500)]);
    const r = await hashChunks(new Uint8Array(b).buffer, b.length, chunk);
    const expected: string[] = [];
    for (let at = 0; at < b.length; at += chunk) expected.push(sha(b.subarray(at, at + chunk)).toString("hex"));
    expect(r.hashes.map((h) => h.toString("hex"))).toEqual(expected);
  });

  it("ends idle worker threads, and starts them again for the next job", async () => {
    setHashWorkerIdleMs(200);
    try {
      // One job per thread at least (jobs go round the threads), so each re-arms its idle timer.
      await Promise.all([1, 2, 3, 4].map(() => hashChunks(new Uint8Array(randomBytes(8192)).buffer, 8192, 4096)));
      expect(hashThreads()).toBeGreaterThan(0);
      await waitFor("the idle hash workers to end", () => (hashThreads() === 0 ? true : undefined), 10_000);
      const b = randomBytes(8192);
      const r = await hashChunks(new Uint8Array(b).buffer, 8192, 4096);
      expect(r.hashes[1]!.equals(sha(b.subarray(4096)))).toBe(true);
    } finally {
      setHashWorkerIdleMs(30_000);
    }
  });
});
