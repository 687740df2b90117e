import { rmSync } from "node:fs";
import type { Logger } from "../common/logger.js";
import { readChunkHashFile, writeChunkHashFileAsync, type ChunkHashIndex } from "./chunkHashFile.js";

/** Newest indexes kept in memory: 32 MiB per 64 GiB disk, so a few large disks, or many small ones. */
export const DEFAULT_CACHED_INDEX_BYTES = 256 * 1024 * 1024;

type Expect = { sizeBytes: number; chunkBytes: number; digest: ChunkHashIndex["digest"] };

/**
 * The points' chunk hash index files, by path, with the ones just committed kept in memory and
 * written after the commit rather than before it. A point's cycle used to read its parent's index
 * back (and check its digest), then encode, write and fsync its own before the point could commit:
 * 200-300 ms for a 64 GiB disk (32 MiB of hashes) on a cycle that changed 1 MiB. Now the next point
 * takes its parent's hashes from memory, and the file is written in the background once the
 * point's images are in place (so an index never exists without its point's image). A site that
 * dies before the file is whole leaves none, or a torn one its trailing digest rejects: a resync
 * then reads the replica, exactly as for a damaged file.
 */
export class ChunkHashIndexes {
  /** Insertion order is recency: the first entries are evicted first. */
  private readonly cached = new Map<string, ChunkHashIndex>();
  private cachedBytes = 0;
  private readonly writes = new Map<string, Promise<void>>();

  constructor(
    private readonly logger: Logger,
    private readonly maxCachedBytes = DEFAULT_CACHED_INDEX_BYTES,
  ) {}

  /** The index at `path` (memory first), or why there is none to trust. */
  load(path: string, expect: Expect): ChunkHashIndex | { unusable: string } {
    const hit = this.cached.get(path);
    if (hit) return matches(hit, expect) ?? hit;
    return readChunkHashFile(path, expect);
  }

  /**
   * The index at `path` for a new point to build on, taken out of memory (no copy: the new point's
   * hashes are written over it) once its file is whole. Read from the file when not in memory.
   */
  async take(path: string, expect: Expect): Promise<ChunkHashIndex | { unusable: string }> {
    await this.writes.get(path);
    const hit = this.cached.get(path);
    if (!hit) return readChunkHashFile(path, expect);
    this.drop(path);
    return matches(hit, expect) ?? hit;
  }

  /** A committed point's index: kept in memory, its file written in the background. */
  keep(path: string, partialPath: string, index: ChunkHashIndex): void {
    this.drop(path);
    const bytes = index.hashes.length;
    if (bytes <= this.maxCachedBytes) {
      while (this.cachedBytes + bytes > this.maxCachedBytes) this.drop(this.cached.keys().next().value!);
      this.cached.set(path, index);
      this.cachedBytes += bytes;
    }
    const previous = this.writes.get(path) ?? Promise.resolve();
    const write = previous
      .then(() => writeChunkHashFileAsync(partialPath, path, index))
      .catch((err: unknown) => {
        rmSync(partialPath, { force: true });
        this.logger.warn({ err, index: path }, "a point's chunk hash index could not be written: a resync against it reads the replica instead");
      })
      .finally(() => {
        if (this.writes.get(path) === write) this.writes.delete(path);
      });
    this.writes.set(path, write);
  }

  /** The index at `path` is no point's (removed, or its point never committed): memory and file go. */
  async forget(path: string, partialPath: string): Promise<void> {
    this.drop(path);
    await this.writes.get(path);
    rmSync(path, { force: true });
    rmSync(partialPath, { force: true });
  }

  /** Memory only, for a file removed by its caller (pruning); a write under way finishes first. */
  forgetCached(path: string): void {
    this.drop(path);
  }

  /** The file at `path` is being written (its partial is in use). */
  isWriting(path: string): boolean {
    return this.writes.has(path);
  }

  /** Every background write has landed (a clean stop; tests). */
  async settled(): Promise<void> {
    while (this.writes.size) await Promise.all([...this.writes.values()]);
  }

  private drop(path: string): void {
    const hit = this.cached.get(path);
    if (!hit) return;
    this.cached.delete(path);
    this.cachedBytes -= hit.hashes.length;
  }
}

/** Why a kept index does not fit what the caller expects, as readChunkHashFile would say it. */
function matches(index: ChunkHashIndex, expect: Expect): { unusable: string } | undefined {
  if (index.sizeBytes !== expect.sizeBytes || index.chunkBytes !== expect.chunkBytes) {
    return { unusable: `made for ${index.sizeBytes} bytes in ${index.chunkBytes}-byte chunks, not ${expect.sizeBytes} in ${expect.chunkBytes}` };
  }
  return index.digest === expect.digest ? undefined : { unusable: `holds ${index.digest} digests, not ${expect.digest}` };
}
