import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { silentLogger, type Logger } from "../common/logger.js";
import { spawnQemu, type QemuProcess } from "../qemu/processes/index.js";
import { QmpClient } from "../qemu/qmp/index.js";

/**
 * The site's own qemu-storage-daemon: the only process that writes replica qcow2 chains, so every
 * write goes through the QEMU block layer. Started empty; overlays are attached per cycle.
 */
export class SiteStorageDaemon {
  private constructor(
    readonly proc: QemuProcess,
    readonly qmp: QmpClient,
    readonly nbdSocketPath: string,
  ) {}

  static async start(runDir: string, logger: Logger = silentLogger): Promise<SiteStorageDaemon> {
    mkdirSync(runDir, { recursive: true });
    const qmpSocketPath = join(runDir, "storage-qmp.sock");
    const nbdSocketPath = join(runDir, "storage-nbd.sock");
    const pidfile = join(runDir, "storage-daemon.pid");
    await killOrphan(pidfile, logger);
    const proc = await spawnQemu(
      "qemu-storage-daemon",
      [
        "--chardev", `socket,id=qmp,path=${qmpSocketPath},server=on,wait=off`,
        "--monitor", "chardev=qmp",
        "--nbd-server", `addr.type=unix,addr.path=${nbdSocketPath}`,
        "--pidfile", pidfile,
      ],
      [qmpSocketPath, nbdSocketPath],
    );
    const qmp = await QmpClient.connect({ socketPath: qmpSocketPath, logger });
    logger.info({ pid: proc.pid }, "site storage daemon started");
    return new SiteStorageDaemon(proc, qmp, nbdSocketPath);
  }

  async stop(): Promise<void> {
    await this.qmp.close();
    await this.proc.stop();
  }
}

/** A daemon left by a site process that was killed would hold image locks: end it first. */
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
