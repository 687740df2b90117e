import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { compareImages, createImage, startStorageDaemon } from "../../src/qemu/processes/index.js";
import { Cleanup, startPipeline } from "./cleanup.js";
import { CpuMeter } from "./procStats.js";

export interface ReferenceTls {
  caFile: string;
  /** The listening (replica) side. */
  serverCert: string;
  serverKey: string;
  /** The sending (primary) side. */
  clientCert: string;
  clientKey: string;
}

export interface ReferenceResult {
  seconds: number;
  /** Identical per `qemu-img compare` after the run. */
  verified: boolean;
  /** CPU seconds of every stage and both storage daemons. */
  cpuSeconds: number;
  /** CPU seconds of the sending side's stages only (nbdcopy, zstd -1, socat TLS): the production host's share. */
  senderCpuSeconds: number;
  cpu: string;
}

/** A port that was free a moment ago on 127.0.0.1. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** True once something listens on 127.0.0.1:port (read from /proc, so no connection is spent on probing). */
function listening(port: number): boolean {
  const hex = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  return readFileSync("/proc/net/tcp", "utf8")
    .split("\n")
    .some((line) => {
      const f = line.trim().split(/\s+/);
      return f[1] === hex && f[3] === "0A";
    });
}

async function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

const q = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;

/**
 * The reference pipeline, timed end to end: `nbdcopy <source export> - | zstd -1 | socat - OPENSSL:…`
 * into `socat OPENSSL-LISTEN:…,verify=1 - | zstd -d | nbdcopy --flush - <writable export of a fresh
 * qcow2>`, with mutual TLS from the same CA and certificates as the sites. The source is a
 * read-only NBD export of `sourceImage` (qcow2) through qemu-storage-daemon; the destination a
 * qemu-storage-daemon export, as on a replica site. Timed from the start of the sending side to
 * the exit of the receiving side's nbdcopy, which flushes before it exits. Both storage daemons
 * are up before the clock starts; the result is compared with the source afterwards.
 */
export async function runReferencePipeline(opts: { dir: string; sourceImage: string; sizeBytes: number; tls: ReferenceTls; log: (m: string) => void }): Promise<ReferenceResult> {
  const cleanup = new Cleanup(opts.log);
  try {
    const dstImage = join(opts.dir, "ref-dst.qcow2");
    await createImage(dstImage, opts.sizeBytes);
    const src = await startStorageDaemon({
      qmpSocketPath: join(opts.dir, "ref-src-qmp.sock"),
      nbdSocketPath: join(opts.dir, "ref-src-nbd.sock"),
      disks: [{ nodeName: "src", path: opts.sourceImage, readOnly: true }],
      exports: [{ id: "src", nodeName: "src", name: "src", writable: false }],
    });
    cleanup.defer("stop the source storage daemon", () => src.stop());
    const dst = await startStorageDaemon({
      qmpSocketPath: join(opts.dir, "ref-dst-qmp.sock"),
      nbdSocketPath: join(opts.dir, "ref-dst-nbd.sock"),
      disks: [{ nodeName: "dst", path: dstImage }],
      exports: [{ id: "dst", nodeName: "dst", name: "dst", writable: true }],
    });
    const dstStopped = { done: false };
    cleanup.defer("stop the destination storage daemon", () => (dstStopped.done ? undefined : dst.stop()));
    const srcUri = `nbd+unix:///src?socket=${join(opts.dir, "ref-src-nbd.sock")}`;
    const dstUri = `nbd+unix:///dst?socket=${join(opts.dir, "ref-dst-nbd.sock")}`;
    const { tls } = opts;

    let port = 0;
    let receiver: ReturnType<typeof startPipeline> | undefined;
    for (let attempt = 0; attempt < 5 && !receiver; attempt++) {
      port = await freePort();
      const r = startPipeline(
        `socat -u OPENSSL-LISTEN:${port},bind=127.0.0.1,reuseaddr,cert=${q(tls.serverCert)},key=${q(tls.serverKey)},cafile=${q(tls.caFile)},verify=1 STDOUT` +
          ` | zstd -d -q | nbdcopy --flush - ${q(dstUri)}`,
      );
      cleanup.defer("end the receiving pipeline", () => r.kill());
      const deadline = Date.now() + 10_000;
      while (!listening(port) && r.child.exitCode === null && Date.now() < deadline) await sleep(10);
      if (listening(port)) receiver = r;
      else await r.kill(); // lost the port to someone else: try another one
    }
    if (!receiver) throw new Error("the reference receiver (socat OPENSSL-LISTEN) did not start listening");

    const meter = new CpuMeter({ "source qemu-storage-daemon": src.pid, "destination qemu-storage-daemon": dst.pid });
    const started = process.hrtime.bigint();
    const sender = startPipeline(
      `nbdcopy ${q(srcUri)} - | zstd -1 -q | socat -u STDIN OPENSSL:127.0.0.1:${port},cert=${q(tls.clientCert)},key=${q(tls.clientKey)},cafile=${q(tls.caFile)}`,
    );
    cleanup.defer("end the sending pipeline", () => sender.kill());
    // Either side failing ends the other through the TLS connection, except a sender that never
    // connected: then the receiver would listen forever, hence the checks and the deadlines.
    const limitMs = 60_000 + (opts.sizeBytes / (1024 * 1024)) * 1000; // >= 1 MiB/s
    const sent = await withDeadline(sender.exited, limitMs, "the reference sender");
    if (sent.code !== 0) throw new Error(`reference sender failed (exit ${sent.code}): ${sent.stderr.trim()}`);
    const received = await withDeadline(receiver.exited, limitMs, "the reference receiver");
    if (received.code !== 0) throw new Error(`reference receiver failed (exit ${received.code}): ${received.stderr.trim()}`);
    const seconds = Number(received.at - started) / 1e9;
    const daemonsCpu = meter.total();
    const cpuSeconds = daemonsCpu + (sent.cpuSeconds ?? 0) + (received.cpuSeconds ?? 0);
    const cpu = `sender stages ${sent.cpuSeconds?.toFixed(1) ?? "?"} s, receiver stages ${received.cpuSeconds?.toFixed(1) ?? "?"} s, ${meter.report()}`;

    await dst.stop();
    dstStopped.done = true;
    const cmp = await compareImages(dstImage, opts.sourceImage, { formatA: "qcow2", formatB: "qcow2" });
    const verified = cmp.identical;
    if (!verified) throw new Error(`the reference pipeline's copy differs from its source: ${cmp.detail}`);
    return { seconds, verified, cpuSeconds, senderCpuSeconds: sent.cpuSeconds ?? Number.NaN, cpu };
  } finally {
    await cleanup.runAll();
  }
}
