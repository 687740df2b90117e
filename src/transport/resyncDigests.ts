import type { ChunkDigestName } from "../common/chunkDigest.js";
import { ChunkDigest } from "../gen/qreplica/v1/replication.js";

const WIRE: Record<ChunkDigestName, ChunkDigest> = { sha256: ChunkDigest.CHUNK_DIGEST_SHA256, blake3: ChunkDigest.CHUNK_DIGEST_BLAKE3 };

export function digestToWire(name: ChunkDigestName): ChunkDigest {
  return WIRE[name];
}

/** UNSPECIFIED is SHA-256 (senders before the field); undefined for a value this build does not know. */
export function digestFromWire(d: ChunkDigest): ChunkDigestName | undefined {
  if (d === ChunkDigest.CHUNK_DIGEST_UNSPECIFIED || d === ChunkDigest.CHUNK_DIGEST_SHA256) return "sha256";
  if (d === ChunkDigest.CHUNK_DIGEST_BLAKE3) return "blake3";
  return undefined;
}

/**
 * The replica's pick among what the agent offers (Hello.resync_digests): its own index's digest
 * when offered (the index is then sent as it is), otherwise SHA-256, which every agent computes.
 */
export function pickResyncDigest(offered: readonly ChunkDigest[], indexDigest: ChunkDigestName): ChunkDigestName {
  return offered.includes(digestToWire(indexDigest)) ? indexDigest : "sha256";
}
