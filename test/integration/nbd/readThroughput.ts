/**
 * Read throughput of NbdClient.read() against `nbdcopy ... null:` on the same QSD export.
 * Not a test (the machine is shared, timings are noisy): run by hand with
 *   npx tsx test/integration/nbd/readThroughput.ts [sizeMiB=1024] [chunkKiB=4096] [depth=8] [rounds=5] [connections=1]
 * `depth` is per connection; with several connections (the export must advertise CAN_MULTI_CONN,
 * as QSD does) the range is shared between them, as nbdcopy does by default (4 connections).
 * Rounds alternate between the two readers; the median of each is printed.
 */
import path from "node:path";
import { NbdClient } from "../../../src/qemu/nbd/index.js";
import { exec, makeTempDir, nbdUri, startQsd } from "./qsd.js";

const MiB = 1 << 20;
const [sizeMiB = 1024, chunkKiB = 4096, depth = 8, rounds = 5, conns = 1] = process.argv.slice(2).map(Number);

async function ourRead(socketPath: string, pooled: boolean): Promise<number> {
  const clients = await Promise.all(Array.from({ length: conns }, () => NbdClient.connect({ socketPath, exportName: "disk0" })));
  const size = clients[0]!.size;
  const chunk = chunkKiB * 1024;
  const pool: Buffer[] = [];
  const t0 = performance.now();
  let next = 0;
  let bytes = 0;
  const worker = async (c: NbdClient): Promise<void> => {
    while (next < size) {
      const off = next;
      next += chunk;
      const into = pooled ? (pool.pop() ?? Buffer.allocUnsafe(chunk)) : undefined;
      const buf = await c.read(off, Math.min(chunk, size - off), into);
      bytes += buf.length; // not `bytes += await ...`: that would read `bytes` before the await
      if (into) pool.push(into);
    }
  };
  await Promise.all(clients.flatMap((c) => Array.from({ length: depth }, () => worker(c))));
  const s = (performance.now() - t0) / 1000;
  await Promise.all(clients.map((c) => c.disconnect()));
  return bytes / MiB / s;
}

async function nbdcopy(uri: string): Promise<number> {
  const t0 = performance.now();
  await exec("nbdcopy", [uri, "null:"]);
  return sizeMiB / ((performance.now() - t0) / 1000);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const { dir, cleanup } = await makeTempDir("qreplica-nbd-bench-");
const image = path.join(dir, "full.qcow2");
await exec("qemu-img", ["create", "-q", "-f", "qcow2", image, `${sizeMiB}M`]);
await exec("qemu-io", ["-f", "qcow2", image, "-c", `write -P 0x5a 0 ${sizeMiB}M`]);
const qsd = await startQsd({ dir, image, exports: [{ id: "exp0", name: "disk0", writable: false }] });
try {
  const fresh: number[] = [];
  const pooled: number[] = [];
  const theirs: number[] = [];
  await ourRead(qsd.nbdSocket, false); // warm-up (page cache, JIT)
  for (let i = 0; i < rounds; i++) {
    fresh.push(await ourRead(qsd.nbdSocket, false));
    theirs.push(await nbdcopy(nbdUri(qsd, "disk0")));
    pooled.push(await ourRead(qsd.nbdSocket, true));
  }
  const b = median(theirs);
  const line = (label: string, xs: number[]): void =>
    console.log(`${label.padEnd(56)} ${xs.map((x) => x.toFixed(0).padStart(5)).join(" ")} MiB/s  median ${median(xs).toFixed(0)}  (${(median(xs) / b).toFixed(2)}x nbdcopy)`);
  console.log(`${sizeMiB} MiB fully allocated qcow2, QSD read-only export, unix socket`);
  const shape = `${chunkKiB} KiB x ${depth} in flight x ${conns} conn`;
  line(`read() ${shape}, new buffers`, fresh);
  line(`read() ${shape}, reused (into)`, pooled);
  line("nbdcopy URI null: (defaults)", theirs);
} finally {
  await qsd.stop();
  await cleanup();
}
