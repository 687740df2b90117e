/**
 * Minimal qemu-storage-daemon harness for the NBD integration tests (the project-wide one lives in
 * src/qemu/processes/, being written separately). Every started daemon is killed on stop(), and on
 * process exit as a last resort, so a failing test never leaves a QSD behind.
 */
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";

export const exec = promisify(execFile);

export interface QsdExport {
  id: string;
  name: string;
  writable: boolean;
  bitmap?: string;
}

export interface Qsd {
  nbdSocket: string;
  proc: ChildProcess;
  stderr(): string;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

export async function makeTempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Starts QSD on a qcow2 image (node "disk0") with an NBD server on `<dir>/nbd.sock`. */
export async function startQsd(opts: { dir: string; image: string; exports: QsdExport[]; readOnlyImage?: boolean }): Promise<Qsd> {
  const nbdSocket = path.join(opts.dir, "nbd.sock");
  const ro = opts.readOnlyImage ? ",read-only=on" : "";
  const args = [
    "--blockdev",
    `driver=file,node-name=file0,filename=${opts.image}${ro}`,
    "--blockdev",
    `driver=qcow2,node-name=disk0,file=file0${ro}`,
    "--nbd-server",
    `addr.type=unix,addr.path=${nbdSocket},max-connections=16`,
  ];
  for (const e of opts.exports) {
    args.push(
      "--export",
      `type=nbd,id=${e.id},node-name=disk0,name=${e.name},writable=${e.writable ? "on" : "off"}` +
        // QEMU 7.2's QSD takes a list (bitmaps.N=), not the single bitmap= of older qemu-nbd-style docs.
        (e.bitmap ? `,bitmaps.0=${e.bitmap}` : ""),
    );
  }
  const proc = spawn("qemu-storage-daemon", args, { stdio: ["ignore", "pipe", "pipe"] });
  live.add(proc);
  let stderr = "";
  proc.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  proc.stdout?.on("data", (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  const exitPromise = new Promise<void>((resolve) =>
    proc.once("exit", () => {
      exited = true;
      live.delete(proc);
      resolve();
    }),
  );
  const qsd: Qsd = {
    nbdSocket,
    proc,
    stderr: () => stderr,
    stop: async () => {
      if (exited) return;
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 5_000);
      await exitPromise;
      clearTimeout(timer);
    },
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exited) throw new Error(`qemu-storage-daemon exited early: ${stderr}`);
    if (existsSync(nbdSocket) && (await canConnect(nbdSocket))) return qsd;
    if (Date.now() > deadline) {
      await qsd.stop();
      throw new Error(`qemu-storage-daemon did not open ${nbdSocket} within 10 s: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

function canConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ path: socketPath });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

export function nbdUri(qsd: Qsd, exportName: string): string {
  return `nbd+unix:///${exportName}?socket=${qsd.nbdSocket}`;
}

export interface OracleExtent {
  offset: number;
  length: number;
  type: number;
}

/** `nbdinfo --map=CONTEXT --json`, with adjacent equal entries merged (we merge too). */
export async function nbdinfoMap(qsd: Qsd, exportName: string, context: string): Promise<OracleExtent[]> {
  const { stdout } = await exec("nbdinfo", [`--map=${context}`, "--json", nbdUri(qsd, exportName)], {
    maxBuffer: 256 << 20,
  });
  const raw = JSON.parse(stdout) as Array<{ offset: number; length: number; type: number }>;
  const out: OracleExtent[] = [];
  for (const e of raw) {
    const last = out[out.length - 1];
    if (last && last.type === e.type && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ offset: e.offset, length: e.length, type: e.type });
  }
  return out;
}
