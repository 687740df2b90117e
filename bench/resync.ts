import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { getSqliteEventStore, RELATIONSHIP_STREAM_PREFIX } from "../src/ledger/index.js";
import { runTool } from "../src/qemu/processes/index.js";
import { setupTwoSites, type TwoSites } from "../test/helpers/twoSites.js";
import { benchScratch } from "./lib/cleanup.js";
import { describeMix, generateMix, writeMix } from "./lib/mixData.js";
import { median } from "./lib/stats.js";
import type { BenchContext, BenchResult } from "./report.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 64 * KiB;

interface Committed {
  cycleSeq: number;
  kind: string;
  cutoffAt: string;
  committedAt: string;
  dataBytes: number;
  zeroBytes: number;
  wireBytes: number;
  comparedBytes?: number;
}

async function commits(siteB: string): Promise<Committed[]> {
  const path = join(siteB, "ledger.sqlite");
  if (!existsSync(path)) return [];
  const store = getSqliteEventStore({ path, create: false });
  try {
    return (await store.readStream(`${RELATIONSHIP_STREAM_PREFIX}vm1`)).filter((e) => e.type === "CycleCommitted").map((e) => e.data as unknown as Committed);
  } finally {
    await store.close();
  }
}

async function waitForCommit(t: TwoSites, what: string, pick: (c: Committed) => boolean, timeoutMs: number): Promise<Committed> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = (await commits(t.siteB)).find(pick);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${tail(join(t.dir, "agent.log"))}\n${tail(join(t.siteB, "site.log"))}`);
    await sleep(250);
  }
}

function tail(file: string): string {
  return existsSync(file) ? readFileSync(file, "utf8").trim().split("\n").slice(-10).join("\n") : "(no log)";
}

/** A pino line of `file` with message `msg` whose `seq` is `seq`. */
function logLine(file: string, msg: string, seq: number): Record<string, unknown> | undefined {
  if (!existsSync(file)) return undefined;
  for (const line of readFileSync(file, "utf8").split("\n")) {
    if (!line.includes(msg)) continue;
    try {
      const j = JSON.parse(line) as Record<string, unknown>;
      if (j.seq === seq) return j;
    } catch {
      // not JSON
    }
  }
  return undefined;
}

const seconds = (c: Committed) => (Date.parse(c.committedAt) - Date.parse(c.cutoffAt)) / 1000;
const mib = (n: number) => `${(n / MiB).toFixed(n < 10 * MiB ? 1 : 0)} MiB`;

/**
 * resync: a disk full of the realistic mix is replicated in full (the initial replication: the
 * baseline), then the primary's qemu-storage-daemon is killed (-9) after 1% of the disk was
 * rewritten in scattered 64 KiB blocks of random data, so its bitmaps are gone; the restarted
 * VM is resynced by comparison (both sides read and SHA-256 every 64 KiB chunk, only differing
 * chunks travel). Both figures are cut-off -> durable commit from site B's ledger. Rounds repeat
 * the divergence and the crash; the figure is their median.
 */
export async function resync(ctx: BenchContext): Promise<BenchResult[]> {
  const sizeMiB = ctx.quick ? 512 : 4096;
  const rounds = ctx.quick ? 2 : 3;
  const size = sizeMiB * MiB;
  const { dir, cleanup } = benchScratch("qr-bench-resync-", ctx.log);
  try {
    const mixDir = join(dir, "mix");
    mkdirSync(mixDir);
    ctx.log(`generating ${sizeMiB} MiB of the mix`);
    const mix = generateMix(mixDir, size);
    const sitesDir = join(dir, "sites");
    mkdirSync(sitesDir);
    // One cycle an hour: only the initial replication and the resyncs run while measured.
    const t = await setupTwoSites(sitesDir, { diskBytes: size, intervalSeconds: 3600, maxPoints: 100 });
    cleanup.defer("stop sites, agent and VM", () => t.stopAll());
    ctx.log(`filling the primary's ${sizeMiB} MiB disk (${describeMix(mix)})`);
    await writeMix(t.vm.guestUri("vda"), mix, { format: "raw" });
    for (const s of mix.segments) rmSync(s.path, { force: true });
    await t.startSite(t.siteB);
    t.startAgent();
    const full = await waitForCommit(t, "the full replication", (c) => c.kind === "full", 1800_000);
    ctx.log(`full replication: ${seconds(full).toFixed(2)} s; agent read ${mib(size)} (allocated), sent ${mib(full.wireBytes)} (data ${mib(full.dataBytes)} + zeroes ${mib(full.zeroBytes)}); site wrote ${mib(full.dataBytes)}, read and hashed nothing`);

    const blocks = Math.round((size * 0.01) / CHUNK);
    const sources = Array.from({ length: 8 }, (_, i) => {
      const p = join(dir, `random-${i}.bin`);
      writeFileSync(p, randomBytes(CHUNK));
      return p;
    });
    const times: number[] = [];
    const notes: string[] = [];
    let previous = full.cycleSeq;
    for (let round = 1; round <= rounds; round++) {
      // Scattered, distinct 64 KiB blocks: 1% of the disk, flushed so the crash keeps them.
      const offsets = new Set<number>();
      while (offsets.size < blocks) offsets.add(Math.floor(Math.random() * (size / CHUNK)) * CHUNK);
      const commands = [...offsets].map((o, i) => `write -q -s ${sources[i % sources.length]} ${o} ${CHUNK}`);
      for (let i = 0; i < commands.length; i += 500) await runTool("qemu-io", ["-f", "raw", t.vm.guestUri("vda"), ...commands.slice(i, i + 500).flatMap((c) => ["-c", c]), "-c", "flush"]);
      await t.vm.proc.kill("SIGKILL");
      rmSync(t.vm.qmpSocketPath, { force: true });
      rmSync(t.vm.nbdSocketPath, { force: true });
      await t.vm.restart();
      const after = previous;
      const c = await waitForCommit(t, `resync round ${round}`, (x) => x.kind === "resync" && x.cycleSeq > after, 1800_000);
      previous = c.cycleSeq;
      times.push(seconds(c));
      const site = logLine(join(t.siteB, "site.log"), "replica chunk hashes sent", c.cycleSeq);
      const agent = logLine(join(t.dir, "agent.log"), "cycle acknowledged", c.cycleSeq);
      const note =
        `round ${round}: ${seconds(c).toFixed(2)} s (${(seconds(full) / seconds(c)).toFixed(1)}x); diverged ${blocks} x 64 KiB = ${mib(blocks * CHUNK)}; ` +
        `agent compared ${mib(c.comparedBytes ?? 0)}${agent?.knownZeroBytes ? ` (${mib(agent.knownZeroBytes as number)} of it known zero, not read)` : ""}, sent ${mib(c.wireBytes)} (data ${mib(c.dataBytes)} + zeroes ${mib(c.zeroBytes)}` +
        `${agent ? `, cycle ${agent.ms as number} ms: waiting for reads ${Math.round(agent.readWaitMs as number)} ms, hashing ${Math.round(agent.hashMs as number)} ms, waiting for the replica's hashes ${Math.round(agent.replicaWaitMs as number)} ms` : ""}); site read and hashed ${site ? `${mib(site.hashedBytes as number)} in ${site.ms as number} ms` : "?"}, wrote ${mib(c.dataBytes)}`;
      ctx.log(note);
      notes.push(note);
    }
    const value = median(times);
    return [
      {
        name: "resync",
        description: `resync by comparison of a ${sizeMiB} MiB disk (the mix) diverged by 1% in scattered 64 KiB blocks, after kill -9 of the primary's QEMU; cut-off -> commit, median of ${rounds} rounds (${times.map((x) => x.toFixed(2)).join(", ")} s); SHA-256 per 64 KiB chunk on both sides`,
        value,
        unit: "s",
        baseline: seconds(full),
        baselineDescription: `full replication of the same disk in the same run (agent read ${mib(size)}, sent ${mib(full.wireBytes)}; site wrote ${mib(full.dataBytes)})`,
        ratio: seconds(full) / value,
        goal: ">= 5x",
      },
    ];
  } finally {
    await cleanup.runAll();
  }
}
