import { createHash } from "node:crypto";
import { createRequire } from "node:module";

/**
 * The 32-byte digests a resync compares chunks with. Both are cryptographic: with a weaker hash a
 * guest could write data that collides with the replica's old content and stay silently stale.
 * BLAKE3 (native, @napi-rs/blake-hash's build for Linux x86-64 glibc, an optional dependency) runs at about 3x SHA-256's speed per core on these
 * machines even with SHA-NI (measured on 64 KiB chunks: 3.0-3.8 against 0.6-1.1 GB/s under load);
 * SHA-256 stays for FIPS-bound sites and agents that predate BLAKE3.
 */
export type ChunkDigestName = "sha256" | "blake3";

interface Blake3Module {
  blake3(input: Uint8Array): Buffer;
}

const require = createRequire(import.meta.url);
let blake3: { module: Blake3Module; path: string } | null | undefined;

function loadBlake3(): { module: Blake3Module; path: string } | null {
  if (blake3 === undefined) {
    try {
      // Its platform package directly: the wrapper lists builds that were never published, which
      // leaves npm's lockfile unable to satisfy `npm ci`.
      const path = require.resolve("@napi-rs/blake-hash-linux-x64-gnu");
      blake3 = { module: require(path) as Blake3Module, path };
    } catch {
      // Not this platform (or not installed): SHA-256 only.
      blake3 = null;
    }
  }
  return blake3;
}

/**
 * Whether BLAKE3's package is installed for this host, without loading it: loading maps ~4.5 MiB
 * that an agent would carry for nothing until a resync (its peak RSS is a budget).
 */
export function blake3Installed(): boolean {
  if (blake3 !== undefined) return blake3 !== null;
  if (process.platform !== "linux" || process.arch !== "x64") return false;
  try {
    require.resolve("@napi-rs/blake-hash-linux-x64-gnu");
    return true;
  } catch {
    return false;
  }
}

/** Whether BLAKE3 can be computed in this process (loads it). */
export function blake3Available(): boolean {
  return loadBlake3() !== null;
}

/** Where a worker thread loads BLAKE3 from (undefined: not installed); not loaded here. */
export function blake3ModulePath(): string | undefined {
  if (!blake3Installed()) return undefined;
  return blake3?.path ?? require.resolve("@napi-rs/blake-hash-linux-x64-gnu");
}

/** Why a BLAKE3 digest cannot be computed here, and the fix. */
export const BLAKE3_MISSING = "BLAKE3 is not available on this host (the optional package @napi-rs/blake-hash-linux-x64-gnu is for Linux x86-64 with glibc): use SHA-256";

export function chunkDigest(name: ChunkDigestName, data: Uint8Array): Buffer {
  if (name === "sha256") return createHash("sha256").update(data).digest();
  const b3 = loadBlake3();
  if (!b3) throw new Error(BLAKE3_MISSING);
  return b3.module.blake3(data);
}

const zeroDigests = new Map<string, Buffer>();

/** The digest of `length` zero bytes: chunks known to read as zeroes are compared without reading them. */
export function zeroChunkDigest(name: ChunkDigestName, length: number): Buffer {
  const key = `${name}:${length}`;
  let d = zeroDigests.get(key);
  if (!d) {
    d = chunkDigest(name, Buffer.alloc(length));
    zeroDigests.set(key, d);
  }
  return d;
}
