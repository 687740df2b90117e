import { createHash, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { blake3Available, chunkDigest, zeroChunkDigest } from "../../../src/common/chunkDigest.js";
import { hashChunks } from "../../../src/common/hashPool.js";
import { ChunkDigest } from "../../../src/gen/qreplica/v1/replication.js";
import { digestFromWire, pickResyncDigest } from "../../../src/transport/index.js";

describe("chunk digests for resync comparison", () => {
  it("BLAKE3 loads here and matches the reference test vectors; SHA-256 is node's", () => {
    expect(blake3Available()).toBe(true);
    expect(chunkDigest("blake3", Buffer.alloc(0)).toString("hex")).toBe("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
    expect(chunkDigest("blake3", Buffer.from("abc")).toString("hex")).toBe("6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
    const b = randomBytes(1000);
    expect(chunkDigest("sha256", b)).toEqual(createHash("sha256").update(b).digest());
    expect(zeroChunkDigest("blake3", 4096)).toEqual(chunkDigest("blake3", Buffer.alloc(4096)));
    expect(zeroChunkDigest("blake3", 4096)).not.toEqual(zeroChunkDigest("sha256", 4096));
  });

  it("worker threads compute the same BLAKE3 digests, zero chunks included", async () => {
    const chunk = 64 * 1024;
    const b = Buffer.concat([randomBytes(chunk), Buffer.alloc(chunk), randomBytes(3000)]);
    const r = await hashChunks(new Uint8Array(b).buffer, b.length, chunk, "blake3");
    expect(r.hashes).toEqual([0, 1, 2].map((i) => chunkDigest("blake3", b.subarray(i * chunk, Math.min((i + 1) * chunk, b.length)))));
  });

  it("the replica picks its index's digest when offered, else SHA-256; unset means SHA-256", () => {
    expect(pickResyncDigest([ChunkDigest.CHUNK_DIGEST_BLAKE3, ChunkDigest.CHUNK_DIGEST_SHA256], "blake3")).toBe("blake3");
    expect(pickResyncDigest([ChunkDigest.CHUNK_DIGEST_SHA256], "blake3")).toBe("sha256");
    expect(pickResyncDigest([], "blake3")).toBe("sha256");
    expect(pickResyncDigest([ChunkDigest.CHUNK_DIGEST_BLAKE3], "sha256")).toBe("sha256");
    expect(digestFromWire(ChunkDigest.CHUNK_DIGEST_UNSPECIFIED)).toBe("sha256");
    expect(digestFromWire(99 as ChunkDigest)).toBeUndefined();
  });
});
