import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { blake3Available, type ChunkDigestName } from "../common/chunkDigest.js";
import { errorMessage } from "../common/errors.js";
import { faultPoint, faultWhileRunning } from "../common/faultPoints.js";
import { silentLogger, type Logger } from "../common/logger.js";
import { requireId, type IdKind } from "../model/index.js";
import { createImage, runTool } from "../qemu/processes/index.js";
import { SeedUnusableError, StorageWriteError } from "./errors.js";
import { DiskPointWriter } from "./pointWriter.js";
import { chunkHashes } from "./seedHashes.js";
import { resyncChunkBytes } from "../transport/resyncChunks.js";
import type { ChunkHashIndex } from "./chunkHashFile.js";
import { ChunkHashIndexes } from "./chunkHashIndexes.js";
import { ChunkHashTracker, type ChunkHashBase } from "./chunkHashTracker.js";
import type { SiteStorageDaemon } from "./siteStorageDaemon.js";
import { pointExtents, type PointExtentsOptions } from "./pointExtents.js";
import type { ExtentPiece } from "../transport/index.js";

export interface PointDiskSpec {
  diskId: string;
  sizeBytes: number;
  /** The committed image this point's overlay builds on; none for a full (initial) point. */
  parentImage?: string;
  /**
   * For a full point seeded by comparison: an image outside the chain (the old primary's disk)
   * that the base overlays, so only the chunks that differ from it are written.
   */
  seedImage?: string;
  /**
   * Where the point's chunk hashes start from: an empty image's, the parent point's index (by its
   * sequence), or given later (a resync's comparison hashes). None: the point gets no index.
   */
  hashBase?: { kind: "empty" } | { kind: "point"; seq: number } | { kind: "pending" };
}

export interface CommittedPointImages {
  seq: number;
  disks: Array<{ diskId: string; imagePath: string; sizeBytes: number; chunkHashPath?: string }>;
}

const PARTIAL = ".partial";
const CHUNK_HASHES = ".chunks";

interface PointTarget {
  partial: string;
  final: string;
  diskId: string;
  sizeBytes: number;
  /** The point's chunk hash index, written beside the images when its writer could follow the hashes. */
  chunkHashPath: string;
}

/**
 * Replica qcow2 chains, one per replicated disk: `base.qcow2 <- rp-<seq>.qcow2 <- ...`.
 * A point is written into `*.partial` overlays and becomes visible only by renaming them after
 * everything is flushed and fsynced, so a crash at any moment leaves a point whole or absent.
 * Which points exist is the ledger's word; files it does not know are orphans and are removed.
 */
export class ReplicaStorage {
  private readonly logger: Logger;
  /** What the points' chunk hash indexes hold: the fastest digest this host has. */
  readonly indexDigest: ChunkDigestName = blake3Available() ? "blake3" : "sha256";

  /** The points' chunk hash indexes: the newest in memory, files written after each commit. */
  readonly indexes: ChunkHashIndexes;

  /** Points being written per VM: their partial overlays hold the VM's chains open in the daemon. */
  private readonly writing = new Map<string, number>();

  constructor(
    readonly root: string,
    private readonly daemon: SiteStorageDaemon,
    logger?: Logger,
  ) {
    this.logger = logger ?? silentLogger;
    this.indexes = new ChunkHashIndexes(this.logger);
    mkdirSync(root, { recursive: true, mode: 0o700 });
  }

  diskDir(vmId: string, diskId: string): string {
    return join(this.root, safeSegment(vmId), safeSegment(diskId, "disk id"));
  }

  pointImagePath(vmId: string, diskId: string, seq: number, full: boolean): string {
    return join(this.diskDir(vmId, diskId), full ? "base.qcow2" : `rp-${String(seq).padStart(8, "0")}.qcow2`);
  }

  /** Point `seq`'s chunk hash index of one disk (see chunkHashFile.ts). */
  chunkHashPath(vmId: string, diskId: string, seq: number): string {
    return join(this.diskDir(vmId, diskId), `rp-${String(seq).padStart(8, "0")}${CHUNK_HASHES}`);
  }

  /** Point `seq`'s chunk hashes of a disk of `sizeBytes`, or why there are none to trust. */
  loadChunkHashes(vmId: string, diskId: string, seq: number, sizeBytes: number): { hashes: Buffer; chunkBytes: number } | { unusable: string } {
    const r = this.indexes.load(this.chunkHashPath(vmId, diskId, seq), { sizeBytes, chunkBytes: resyncChunkBytes(sizeBytes), digest: this.indexDigest });
    return "unusable" in r ? r : { hashes: r.hashes, chunkBytes: r.chunkBytes };
  }

  /** Only the newest point's index is ever read (a resync compares against it): the others go. */
  pruneChunkHashes(vmId: string, keepSeq: number | undefined): void {
    const keep = keepSeq === undefined ? undefined : `rp-${String(keepSeq).padStart(8, "0")}${CHUNK_HASHES}`;
    let diskIds: string[];
    try {
      diskIds = readdirSync(join(this.root, safeSegment(vmId)));
    } catch {
      return;
    }
    for (const diskId of diskIds) {
      const dir = join(this.root, safeSegment(vmId), diskId);
      if (!statSync(dir).isDirectory()) continue;
      for (const f of readdirSync(dir)) {
        if (!(f.endsWith(CHUNK_HASHES) || f.endsWith(CHUNK_HASHES + PARTIAL)) || f === keep) continue;
        // The newest point's index may still be on its way in: its partial stays while it is written.
        if (keep && f === `${keep}${PARTIAL}` && this.indexes.isWriting(join(dir, keep))) continue;
        rmSync(join(dir, f), { force: true });
        this.indexes.forgetCached(join(dir, f));
      }
    }
  }

  private async hashTracker(vmId: string, seq: number, d: PointDiskSpec): Promise<ChunkHashTracker | undefined> {
    const chunkBytes = resyncChunkBytes(d.sizeBytes);
    const base = d.hashBase;
    if (!base) return undefined;
    let start: ChunkHashBase;
    if (base.kind === "point") {
      // Taken, not copied: the new point's hashes are written over the parent's.
      const loaded = await this.indexes.take(this.chunkHashPath(vmId, d.diskId, base.seq), { sizeBytes: d.sizeBytes, chunkBytes, digest: this.indexDigest });
      if ("unusable" in loaded) {
        this.logger.debug({ vm: vmId, disk: d.diskId, seq, parent: base.seq, why: loaded.unusable }, "no chunk hash index for this point: its parent's is unusable");
        return undefined;
      }
      start = { kind: "known", hashes: loaded.hashes };
    } else {
      start = base;
    }
    return new ChunkHashTracker(d.sizeBytes, chunkBytes, this.indexDigest, start);
  }

  async beginPoint(vmId: string, seq: number, disks: PointDiskSpec[]): Promise<PointWrite> {
    const writers: DiskPointWriter[] = [];
    const targets: PointTarget[] = [];
    try {
      for (const d of disks) {
        const full = d.parentImage === undefined;
        const final = this.pointImagePath(vmId, d.diskId, seq, full);
        const partial = final + PARTIAL;
        mkdirSync(dirname(final), { recursive: true, mode: 0o700 });
        rmSync(partial, { force: true });
        // An index left by an earlier chain with the same sequence must never describe this point.
        const chunkHashPath = this.chunkHashPath(vmId, d.diskId, seq);
        await this.indexes.forget(chunkHashPath, chunkHashPath + PARTIAL);
        // Relative backing names keep a chain valid when the storage root is moved.
        const backing = full ? (d.seedImage ? { backing: d.seedImage, backingFormat: "qcow2" } : {}) : { backing: basename(d.parentImage!), backingFormat: "qcow2" };
        await createImage(partial, d.sizeBytes, backing).catch((err: unknown) => {
          // Named like a write that finds the storage full: the operator's fix is the same.
          if (!/No space left on device/i.test(errorMessage(err))) throw err;
          throw new StorageWriteError(
            vmId,
            d.diskId,
            `creating the point's overlay failed: the file system holding ${dirname(partial)} is full (ENOSPC); free space there or move the site's storageRoot to a larger one. Nothing was committed; the agent sends the cycle again`,
            { cause: err },
          );
        });
        targets.push({ partial, final, diskId: d.diskId, sizeBytes: d.sizeBytes, chunkHashPath });
        const hashes = await this.hashTracker(vmId, seq, d);
        writers.push(await DiskPointWriter.open(this.daemon, { vmId, diskId: d.diskId, seq, imagePath: partial, sizeBytes: d.sizeBytes, logger: this.logger, hashes }));
      }
    } catch (err) {
      await Promise.allSettled(writers.map((w) => w.close()));
      for (const t of targets) rmSync(t.partial, { force: true });
      throw err;
    }
    this.writing.set(vmId, (this.writing.get(vmId) ?? 0) + 1);
    const done = () => {
      const n = (this.writing.get(vmId) ?? 1) - 1;
      if (n > 0) this.writing.set(vmId, n);
      else this.writing.delete(vmId);
    };
    return new PointWrite(vmId, seq, writers, targets, this.logger, this.indexes, done);
  }

  /**
   * A point of this VM is being written: the daemon holds its chain open (QEMU's image locks),
   * so a merge must wait for the commit: qemu-img could not take the write lock.
   */
  isWriting(vmId: string): boolean {
    return this.writing.has(vmId);
  }

  /**
   * Holds the VM's chains as a point write does: no merge starts (retention asks isWriting) until
   * the returned release is called. For a reader of committed points (extended replication), which
   * must not see a merge rewrite the images under it. Take it where no merge runs (the VM's
   * serialized work), and run retention again after the release.
   */
  holdChains(vmId: string): () => void {
    this.writing.set(vmId, (this.writing.get(vmId) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.writing.get(vmId) ?? 1) - 1;
      if (n > 0) this.writing.set(vmId, n);
      else this.writing.delete(vmId);
    };
  }

  /** A committed point's disk as extents, whole or only its top `depth` overlays (see pointExtents). */
  pointExtents(imagePath: string, o: PointExtentsOptions): AsyncGenerator<ExtentPiece> {
    return pointExtents(this.daemon, imagePath, o);
  }

  /** Seed images for a reverse replication (the old primary's disks), kept until the first point. */
  saveSeeds(vmId: string, seeds: Array<{ diskId: string; imagePath: string }>): void {
    const dir = join(this.root, safeSegment(vmId));
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeFileSync(join(dir, "seeds.json"), JSON.stringify(seeds, null, 2), { mode: 0o600 });
  }

  /**
   * A seed becomes the backing file of the reverse chain's base: it must be a qcow2 image that no
   * other process has open for writing. Opening it without force-share takes QEMU's image lock,
   * which a running (or paused) VM on that disk holds.
   */
  async checkSeed(diskId: string, imagePath: string, waitMs = 10_000): Promise<void> {
    if (!existsSync(imagePath)) throw new SeedUnusableError(diskId, imagePath, "does not exist on this site's host");
    let info: { format?: string } | undefined;
    // A primary stopped by a planned failover is quitting right now: its lock goes within moments.
    for (const deadline = Date.now() + waitMs; !info; ) {
      try {
        info = JSON.parse((await runTool("qemu-img", ["info", "--output=json", imagePath])).stdout) as { format?: string };
      } catch (err) {
        if (!/lock/i.test(errorMessage(err))) throw new SeedUnusableError(diskId, imagePath, `cannot be read: ${errorMessage(err)}`, { cause: err });
        if (Date.now() > deadline) {
          throw new SeedUnusableError(
            diskId,
            imagePath,
            "is in use by another process (the old primary's VM, paused after fencing, still has it open): shut that VM down, then run 'qreplica reverse' again",
            { cause: err },
          );
        }
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    if (info.format !== "qcow2")
      throw new SeedUnusableError(diskId, imagePath, `is ${info.format ?? "of unknown format"}, not qcow2: convert it first (qemu-img convert -O qcow2)`);
  }

  /** The digest of each chunk of an image read through its chain, for resynchronisation by comparison. */
  seedChunkHashes(imagePath: string, chunkBytes: number, digest: ChunkDigestName): AsyncGenerator<Buffer> {
    return chunkHashes(this.daemon, imagePath, chunkBytes, digest);
  }

  loadSeeds(vmId: string): Array<{ diskId: string; imagePath: string }> {
    try {
      return JSON.parse(readFileSync(join(this.root, safeSegment(vmId), "seeds.json"), "utf8")) as Array<{ diskId: string; imagePath: string }>;
    } catch {
      return [];
    }
  }

  /** Deletes partial overlays and images the ledger does not list (crash leftovers). */
  removeOrphans(vmId: string, committedImages: ReadonlySet<string>): string[] {
    const removed: string[] = [];
    let diskIds: string[];
    try {
      diskIds = readdirSync(join(this.root, safeSegment(vmId)));
    } catch {
      return removed;
    }
    for (const diskId of diskIds) {
      const dir = join(this.root, safeSegment(vmId), diskId);
      if (!statSync(dir).isDirectory()) continue;
      for (const f of readdirSync(dir)) {
        const path = join(dir, f);
        if (f.endsWith(PARTIAL) || (f.endsWith(".qcow2") && !committedImages.has(path))) {
          rmSync(path, { force: true });
          removed.push(path);
        }
      }
    }
    if (removed.length) this.logger.warn({ vm: vmId, removed }, "removed replica images the ledger does not know");
    return removed;
  }

  /**
   * Retention: folds the point `next` into the base below it, so the base becomes that point.
   * `next` is kept (`-d`) and still opens as that point; the caller deletes it with
   * removeMergedImage only once the ledger says the base is that point. Safe to repeat after a
   * crash at any step: committing the same overlay again writes the same data.
   */
  async mergeIntoBase(basePath: string, nextPath: string, afterNextPath: string | undefined): Promise<void> {
    const commit = ["commit", "-q", "-d", "-b", basePath, nextPath];
    await faultWhileRunning("crash-mid-merge", "qemu-img", commit);
    await runTool("qemu-img", commit);
    fsyncPath(basePath);
    faultPoint("crash-after-merge-commit");
    if (afterNextPath) {
      await runTool("qemu-img", ["rebase", "-q", "-u", "-b", basename(basePath), "-F", "qcow2", afterNextPath]);
      fsyncPath(afterNextPath);
    }
  }

  /**
   * Retention tiers: folds a point that is not the oldest into the next one, `nextPath`, which is
   * rebased in safe mode onto `belowPath` (the point before the folded one; none: the folded point
   * was the first of its disk). qemu-img copies into the next overlay every cluster it does not
   * hold itself and reads differently through the folded point than through `belowPath`, then
   * rewrites its backing name: what the next point reads never changes, at any moment, so a crash
   * leaves it correct, and running it again finishes the job (copies nothing already copied). The
   * folded image stays until the ledger no longer names it (removeMergedImage).
   */
  async foldIntoNext(belowPath: string | undefined, nextPath: string): Promise<void> {
    const rebase = ["rebase", "-q", ...(belowPath ? ["-b", basename(belowPath), "-F", "qcow2"] : ["-b", ""]), nextPath];
    await faultWhileRunning("crash-mid-merge", "qemu-img", rebase);
    await runTool("qemu-img", rebase);
    fsyncPath(nextPath);
  }

  /** The overlay a merge folded into the base, once no point in the ledger names it. */
  removeMergedImage(path: string): void {
    rmSync(path, { force: true });
    fsyncPath(dirname(path));
  }
}

/** One recovery point being written: all disks of the VM at one cut-off. */
export class PointWrite {
  private done = false;

  constructor(
    readonly vmId: string,
    readonly seq: number,
    private readonly writers: DiskPointWriter[],
    private readonly targets: PointTarget[],
    private readonly logger: Logger,
    private readonly indexes: ChunkHashIndexes,
    /** Called once, when the point is committed or discarded. */
    private readonly onDone: () => void = () => undefined,
  ) {}

  private released = false;

  private release(): void {
    if (this.released) return;
    this.released = true;
    this.onDone();
  }

  disk(diskId: string): DiskPointWriter | undefined {
    return this.writers.find((w) => w.diskId === diskId);
  }

  /** Makes the point durable and visible. The caller records it in the ledger next. */
  async commit(): Promise<CommittedPointImages> {
    this.done = true;
    const indexes = new Map<string, ChunkHashIndex>();
    try {
      for (const w of this.writers) {
        const hashes = await w.finish();
        const t = this.targets.find((x) => x.diskId === w.diskId)!;
        if (hashes) indexes.set(t.diskId, { digest: w.hashes!.digest, chunkBytes: w.hashes!.chunkBytes, sizeBytes: t.sizeBytes, hashes });
      }
    } catch (err) {
      await this.discard();
      throw err;
    }
    // The writers have closed their nodes: the daemon no longer holds the chain.
    this.release();
    for (const t of this.targets) renameSync(t.partial, t.final);
    for (const dir of new Set(this.targets.map((t) => dirname(t.final)))) fsyncPath(dir);
    // After the images: an index never exists without its point's image (see ChunkHashIndexes).
    for (const t of this.targets) {
      const index = indexes.get(t.diskId);
      if (index) this.indexes.keep(t.chunkHashPath, t.chunkHashPath + PARTIAL, index);
    }
    const indexed = new Set(indexes.keys());
    return {
      seq: this.seq,
      disks: this.targets.map((t) => ({ diskId: t.diskId, imagePath: t.final, sizeBytes: t.sizeBytes, ...(indexed.has(t.diskId) ? { chunkHashPath: t.chunkHashPath } : {}) })),
    };
  }

  /** A resync's comparison hashes of `diskId` (what the point is written over) arrived, or there are none. */
  setHashBase(diskId: string, hashes: Buffer | undefined): void {
    this.disk(diskId)?.hashes?.setBase(hashes);
  }

  async discard(): Promise<void> {
    this.done = true;
    await Promise.allSettled(this.writers.map((w) => w.close()));
    for (const t of this.targets) {
      rmSync(t.partial, { force: true });
      rmSync(t.chunkHashPath + PARTIAL, { force: true });
    }
    this.release();
    this.logger.info({ vm: this.vmId, seq: this.seq }, "partial point discarded");
  }

  get finished(): boolean {
    return this.done;
  }
}

function fsyncPath(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Ids become directory names: nothing that could escape the storage root. */
export function safeSegment(id: string, kind: IdKind = "VM id"): string {
  // The last line of defence: every edge validates ids already (src/model/ids.ts).
  return requireId(kind, id, "replica storage path");
}
