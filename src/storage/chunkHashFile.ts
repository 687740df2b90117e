import { createHash } from "node:crypto";
import { closeSync, fsyncSync, openSync, readFileSync, writeSync } from "node:fs";
import { open, rename } from "node:fs/promises";
import type { ChunkDigestName } from "../common/chunkDigest.js";
import { errorMessage } from "../common/errors.js";

/**
 * A recovery point's chunk hashes on disk, one file per point and disk: the SHA-256 of every
 * fixed-size chunk of the point's full content (read through its chain), kept so that a resync
 * compares against the replica without reading it.
 *
 * Layout (little endian): magic "QRCHUNK1" | chunkBytes u32 | digest u32 (1 SHA-256,
 * 2 BLAKE3) | sizeBytes u64 | count u64 | count x 32-byte digest | SHA-256 of everything before it. The trailing digest turns
 * a torn or damaged file into "no index" (the resync then reads the replica) rather than wrong
 * hashes, which would leave differing chunks unsent.
 */
const MAGIC = Buffer.from("QRCHUNK1", "latin1");
const HEADER_BYTES = 32;
const DIGEST_BYTES = 32;
const DIGEST_IDS: Record<ChunkDigestName, number> = { sha256: 1, blake3: 2 };

export interface ChunkHashIndex {
  digest: ChunkDigestName;
  chunkBytes: number;
  sizeBytes: number;
  /** count x 32 bytes, chunk i at 32 * i. */
  hashes: Buffer;
}

export function chunkCount(sizeBytes: number, chunkBytes: number): number {
  return Math.ceil(sizeBytes / chunkBytes);
}

function headerOf(index: ChunkHashIndex): Buffer {
  const count = chunkCount(index.sizeBytes, index.chunkBytes);
  if (index.hashes.length !== count * 32) throw new Error(`chunk hash index: ${index.hashes.length / 32} hashes for ${count} chunks`);
  const header = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(header, 0);
  header.writeUInt32LE(index.chunkBytes, 8);
  header.writeUInt32LE(DIGEST_IDS[index.digest], 12);
  header.writeBigUInt64LE(BigInt(index.sizeBytes), 16);
  header.writeBigUInt64LE(BigInt(count), 24);
  return header;
}

/** The file's three parts: header, hashes (not copied) and the digest of both. */
function fileParts(index: ChunkHashIndex): [Buffer, Buffer, Buffer] {
  const header = headerOf(index);
  return [header, index.hashes, createHash("sha256").update(header).update(index.hashes).digest()];
}

export function encodeChunkHashes(index: ChunkHashIndex): Buffer {
  return Buffer.concat(fileParts(index));
}

/** The index in `file`, or why it cannot be used for a disk of `expect`'s size and chunk size. */
export function decodeChunkHashes(file: Buffer, expect: { sizeBytes: number; chunkBytes: number; digest: ChunkDigestName }): ChunkHashIndex | { unusable: string } {
  if (file.length < HEADER_BYTES + DIGEST_BYTES) return { unusable: `${file.length} bytes, shorter than a header` };
  if (!file.subarray(0, 8).equals(MAGIC)) return { unusable: "not a chunk hash index (magic)" };
  const chunkBytes = file.readUInt32LE(8);
  const digest = (Object.keys(DIGEST_IDS) as ChunkDigestName[]).find((d) => DIGEST_IDS[d] === file.readUInt32LE(12));
  const sizeBytes = Number(file.readBigUInt64LE(16));
  const count = file.readBigUInt64LE(24);
  if (count !== BigInt(chunkCount(sizeBytes, Math.max(1, chunkBytes))) || chunkBytes === 0) return { unusable: "header inconsistent" };
  const body = HEADER_BYTES + Number(count) * 32;
  if (file.length !== body + DIGEST_BYTES) return { unusable: `${file.length} bytes, expected ${body + DIGEST_BYTES}` };
  if (!createHash("sha256").update(file.subarray(0, body)).digest().equals(file.subarray(body))) return { unusable: "damaged (its digest does not match)" };
  if (sizeBytes !== expect.sizeBytes || chunkBytes !== expect.chunkBytes) {
    return { unusable: `made for ${sizeBytes} bytes in ${chunkBytes}-byte chunks, not ${expect.sizeBytes} in ${expect.chunkBytes}` };
  }
  if (digest !== expect.digest) return { unusable: `holds ${digest ?? "unknown"} digests, not ${expect.digest}` };
  return { digest, chunkBytes, sizeBytes, hashes: Buffer.from(file.subarray(HEADER_BYTES, body)) };
}

/** Writes and fsyncs `path` (owner-only); the caller renames it into place. */
export function writeChunkHashFile(path: string, index: ChunkHashIndex): void {
  const fd = openSync(path, "w", 0o600);
  try {
    const data = encodeChunkHashes(index);
    for (let at = 0; at < data.length; ) at += writeSync(fd, data, at);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes the index to `partialPath` off the event loop, fsyncs it, and renames it to `path`.
 * `index.hashes` must not change until this resolves.
 */
export async function writeChunkHashFileAsync(partialPath: string, path: string, index: ChunkHashIndex): Promise<void> {
  const parts = fileParts(index);
  const fh = await open(partialPath, "w", 0o600);
  try {
    let written = 0;
    const total = parts.reduce((n, b) => n + b.length, 0);
    while (written < total) {
      const { bytesWritten } = await fh.writev(remaining(parts, written));
      written += bytesWritten;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(partialPath, path);
}

/** The parts from byte `skip` on (a short writev leaves the rest to write). */
function remaining(parts: Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of parts) {
    if (skip >= b.length) skip -= b.length;
    else {
      out.push(skip ? b.subarray(skip) : b);
      skip = 0;
    }
  }
  return out;
}

export function readChunkHashFile(path: string, expect: { sizeBytes: number; chunkBytes: number; digest: ChunkDigestName }): ChunkHashIndex | { unusable: string } {
  let file: Buffer;
  try {
    file = readFileSync(path);
  } catch (err) {
    return { unusable: (err as NodeJS.ErrnoException).code === "ENOENT" ? "absent" : errorMessage(err) };
  }
  return decodeChunkHashes(file, expect);
}
