import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { errorMessage } from "../common/errors.js";
import { silentLogger, type Logger } from "../common/logger.js";
import { spawnQemu, type QemuProcess } from "../qemu/processes/index.js";
import { QmpClient } from "../qemu/qmp/index.js";

/**
 * The site's own qemu-storage-daemon: the only process that writes replica qcow2 chains, so every
 * write goes through the QEMU block layer. Started empty; overlays are attached per cycle.
 */
export class SiteStorageDaemon {
  /** Index into WRITE_MODES of the first mode that worked on this site's storage; advances on failure. */
  private writeMode = 0;

  private constructor(
    readonly proc: QemuProcess,
    readonly qmp: QmpClient,
    readonly nbdSocketPath: string,
    private readonly logger: Logger,
  ) {}

  /**
   * `blockdev-add`s a writable qcow2 node for `imagePath` in the best write mode the storage
   * takes: O_DIRECT with io_uring (or Linux AIO), else the page cache. Writing a point through the
   * page cache into an overlay whose backing chain holds data cost qemu-storage-daemon about
   * three times the kernel CPU of direct I/O (measured: 1 GiB into rp-N, 4.5 s vs 1.3 s of
   * system time), and the point is fsynced at commit anyway. tmpfs and some other file systems
   * refuse O_DIRECT, and older kernels io_uring: those fall back, once per daemon.
   */
  async addWritableImage(nodeName: string, imagePath: string): Promise<{ mode: string }> {
    for (;;) {
      const mode = WRITE_MODES[this.writeMode]!;
      try {
        await this.qmp.execute("blockdev-add", {
          driver: "qcow2",
          "node-name": nodeName,
          ...(mode.cache ? { cache: mode.cache } : {}),
          file: { driver: "file", filename: imagePath, ...mode.file },
        });
        return { mode: mode.name };
      } catch (err) {
        // Only refusals of the mode itself move on; a missing file stays an error in any mode.
        if (this.writeMode === WRITE_MODES.length - 1 || !MODE_REFUSED.test(errorMessage(err))) throw err;
        this.logger.warn({ err, mode: mode.name, image: imagePath }, "the storage refused this write mode; trying the next one");
        this.writeMode++;
      }
    }
  }

  static async start(runDir: string, logger: Logger = silentLogger): Promise<SiteStorageDaemon> {
    mkdirSync(runDir, { recursive: true, mode: 0o700 });
    const qmpSocketPath = join(runDir, "storage-qmp.sock");
    const nbdSocketPath = join(runDir, "storage-nbd.sock");
    const pidfile = join(runDir, "storage-daemon.pid");
    await killOrphan(pidfile, logger);
    const proc = await spawnQemu(
      "qemu-storage-daemon",
      [
        "--chardev",
        `socket,id=qmp,path=${qmpSocketPath},server=on,wait=off`,
        "--monitor",
        "chardev=qmp",
        "--nbd-server",
        `addr.type=unix,addr.path=${nbdSocketPath}`,
        "--pidfile",
        pidfile,
      ],
      [qmpSocketPath, nbdSocketPath],
      30_000,
      // A site killed with SIGKILL must not leave a daemon holding its images' locks.
      { dieWithParent: true },
    );
    const qmp = await QmpClient.connect({ socketPath: qmpSocketPath, logger });
    logger.info({ pid: proc.pid }, "site storage daemon started");
    return new SiteStorageDaemon(proc, qmp, nbdSocketPath, logger);
  }

  async stop(): Promise<void> {
    await this.qmp.close();
    await this.proc.stop();
  }
}

const WRITE_MODES: ReadonlyArray<{ name: string; cache?: { direct: boolean }; file: Record<string, unknown> }> = [
  { name: "direct+io_uring", cache: { direct: true }, file: { aio: "io_uring", cache: { direct: true } } },
  { name: "direct+native", cache: { direct: true }, file: { aio: "native", cache: { direct: true } } },
  { name: "page cache", file: {} },
];

// What QEMU says when the file system refuses O_DIRECT (EINVAL) or the kernel io_uring / AIO.
const MODE_REFUSED = /Invalid argument|io_uring|native|not supported|Operation not permitted|Function not implemented/i;

/**
 * A daemon left by a site process that was killed would hold image locks: end it first. Daemons
 * started with `dieWithParent` never outlive their site; this covers those of older versions. Only
 * called with the site directory's lock held, so the daemon found cannot be a live site's.
 */
async function killOrphan(pidfile: string, logger: Logger): Promise<void> {
  if (!existsSync(pidfile)) return;
  const pid = Number(readFileSync(pidfile, "utf8").trim());
  if (Number.isInteger(pid) && pid > 1) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (cmdline.includes("qemu-storage-daemon") && cmdline.includes(pidfile)) {
        process.kill(pid, "SIGKILL");
        for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i++) await sleep(20);
        logger.warn({ pid }, "killed an orphaned storage daemon of an earlier site process");
      }
    } catch {
      // Already gone.
    }
  }
  rmSync(pidfile, { force: true });
}
