import { createHash } from "node:crypto";
import { open } from "node:fs/promises";
import { silentLogger, type Logger } from "../common/logger.js";
import { dirname } from "node:path";
import { errorMessage } from "../common/errors.js";
import { NbdClient, NbdCommandError } from "../qemu/nbd/index.js";
import type { SiteStorageDaemon } from "./siteStorageDaemon.js";
import { ExtentOutOfRangeError, StorageWriteError } from "./errors.js";
import type { ChunkHashTracker } from "./chunkHashTracker.js";

const MAX_IN_FLIGHT = 8;
const MAX_ZERO_REQUEST = 1024 * 1024 * 1024;

/**
 * Writes one disk's share of a recovery point into its (still partial) overlay through the site's
 * storage daemon: a writable NBD export of the overlay node, several writes in flight.
 */
export class DiskPointWriter {
  private readonly pending = new Set<Promise<void>>();
  private failure: Error | undefined;
  private closed = false;

  private constructor(
    readonly vmId: string,
    readonly diskId: string,
    readonly imagePath: string,
    readonly sizeBytes: number,
    private readonly daemon: SiteStorageDaemon,
    private readonly nodeName: string,
    private readonly client: NbdClient,
    private readonly logger: Logger,
    /** Follows the writes so that the point's chunk hashes are known without reading it back. */
    readonly hashes: ChunkHashTracker | undefined,
  ) {}

  static async open(
    daemon: SiteStorageDaemon,
    opts: { vmId: string; diskId: string; seq: number; imagePath: string; sizeBytes: number; logger?: Logger; hashes?: ChunkHashTracker },
  ): Promise<DiskPointWriter> {
    // QEMU node names are limited to 31 characters; VM and disk ids are not.
    const nodeName = `w${createHash("sha256").update(`${opts.vmId}/${opts.diskId}/${opts.seq}`).digest("hex").slice(0, 24)}`;
    const logger = opts.logger ?? silentLogger;
    // Unique per point: a superseded stream's writer may still be closing while the next one opens.
    // A writer left over from an interrupted attempt at the same point would hold the name: detach it.
    await detach(daemon, nodeName).catch(() => undefined);
    const { mode } = await daemon.addWritableImage(nodeName, opts.imagePath);
    logger.debug({ vm: opts.vmId, disk: opts.diskId, image: opts.imagePath, mode }, "point image opened for writing");
    try {
      await daemon.qmp.execute("block-export-add", { type: "nbd", id: nodeName, "node-name": nodeName, name: nodeName, writable: true });
      const client = await NbdClient.connect({ socketPath: daemon.nbdSocketPath, exportName: nodeName });
      return new DiskPointWriter(opts.vmId, opts.diskId, opts.imagePath, opts.sizeBytes, daemon, nodeName, client, logger, opts.hashes);
    } catch (err) {
      await detach(daemon, nodeName).catch(() => undefined);
      throw new StorageWriteError(opts.vmId, opts.diskId, `cannot open ${opts.imagePath} for writing`, { cause: err });
    }
  }

  get maxWriteBytes(): number {
    return this.client.maxRequestBytes;
  }

  /**
   * Resolves once the write is queued (several are in flight); `onSettled` runs once the storage
   * daemon has answered for every byte of it, or the write failed: `data` is free for reuse then.
   */
  async write(offset: number, data: Buffer, onSettled?: () => void): Promise<void> {
    const settled: Array<Promise<void>> = [];
    try {
      this.checkRange(offset, data.length);
      await this.hashes?.noteData(offset, data);
      for (let at = 0; at < data.length; at += this.client.maxRequestBytes) {
        const piece = data.subarray(at, Math.min(data.length, at + this.client.maxRequestBytes));
        settled.push((await this.submit(() => this.client.write(offset + at, piece))).done);
      }
    } finally {
      if (onSettled) void Promise.allSettled(settled).then(onSettled);
    }
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
    this.hashes?.noteZeroes(offset, length);
    for (let at = 0; at < length; at += MAX_ZERO_REQUEST) {
      const n = Math.min(MAX_ZERO_REQUEST, length - at);
      await this.submit(() => this.client.writeZeroes(offset + at, n));
    }
  }

  /**
   * Everything written reaches stable storage: NBD flush, detach from QEMU, fsync of the file.
   * Resolves with the point's chunk hashes when they could be followed (undefined otherwise).
   */
  async finish(): Promise<Buffer | undefined> {
    await this.drain();
    let hashes: Buffer | undefined;
    try {
      await this.client.flush();
      // Without its index the point is as good; only a later resync then reads it.
      hashes = await this.hashes
        ?.finish((offset, length) => this.client.read(offset, length))
        .catch((err: unknown) => {
          this.logger.warn({ err, vm: this.vmId, disk: this.diskId }, "the point's chunk hashes could not be completed; a resync against it will read it");
          return undefined;
        });
    } catch (err) {
      throw this.fail(new StorageWriteError(this.vmId, this.diskId, failure("flush", this.imagePath, err), { cause: err }));
    } finally {
      await this.close();
    }
    // On the thread pool: a point of several GiB takes a while to reach the disk, and the
    // site's other VMs keep replicating meanwhile.
    const file = await open(this.imagePath, "r");
    try {
      await file.sync();
    } finally {
      await file.close();
    }
    return hashes;
  }

  /** Stops writing; the caller deletes the partial image. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.pending]);
    await this.client.disconnect().catch(() => undefined);
    await detach(this.daemon, this.nodeName).catch((err: unknown) => this.logger.warn({ err, node: this.nodeName }, "detach failed"));
  }

  /** Queues `op` once fewer than MAX_IN_FLIGHT are pending; `done` is its (never rejecting) completion. */
  private async submit(op: () => Promise<void>): Promise<{ done: Promise<void> }> {
    if (this.failure) throw this.failure;
    while (this.pending.size >= MAX_IN_FLIGHT) await Promise.race(this.pending);
    if (this.failure) throw this.failure;
    const p: Promise<void> = op()
      .catch((err: unknown) => {
        this.fail(new StorageWriteError(this.vmId, this.diskId, failure("write", this.imagePath, err), { cause: err }));
      })
      .finally(() => this.pending.delete(p));
    this.pending.add(p);
    return { done: p };
  }

  private async drain(): Promise<void> {
    await Promise.all([...this.pending]);
    if (this.failure) throw this.failure;
  }

  private fail(err: Error): Error {
    this.failure ??= err;
    return this.failure;
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      throw new ExtentOutOfRangeError(this.diskId, offset, length, this.sizeBytes);
    }
  }
}

/**
 * What the ledger's CycleFailed and the agent are told: the storage's own reason, and for a full
 * file system what to do (before, a full replica storage said only "write failed").
 */
function failure(what: "write" | "flush", imagePath: string, err: unknown): string {
  if (err instanceof NbdCommandError && err.errnoName === "ENOSPC") {
    return `${what} failed: the file system holding ${dirname(imagePath)} is full (ENOSPC); free space there or move the site's storageRoot to a larger one. Nothing was committed; the agent sends the cycle again`;
  }
  return `${what} failed: ${errorMessage(err)}`;
}

async function detach(daemon: SiteStorageDaemon, nodeName: string): Promise<void> {
  const exports = await daemon.qmp.execute<Array<{ id: string }>>("query-block-exports");
  if (exports.some((e) => e.id === nodeName)) {
    const gone = daemon.qmp.waitForEvent("BLOCK_EXPORT_DELETED", (d) => d.id === nodeName, 30_000);
    gone.catch(() => undefined);
    await daemon.qmp.execute("block-export-del", { id: nodeName, mode: "hard" });
    await gone;
  }
  const nodes = await daemon.qmp.execute<Array<{ "node-name": string }>>("query-named-block-nodes", { flat: true });
  if (nodes.some((n) => n["node-name"] === nodeName)) await daemon.qmp.execute("blockdev-del", { "node-name": nodeName });
}
