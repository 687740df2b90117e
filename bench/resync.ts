import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { loadavg } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { getSqliteEventStore, RELATIONSHIP_STREAM_PREFIX } from "../src/ledger/index.js";
import { runTool } from "../src/qemu/processes/index.js";
import { setupTwoSites, type TwoSites } from "../test/helpers/twoSites.js";
import { benchScratch } from "./lib/cleanup.js";
import { describeMix, generateMix, writeMix } from "./lib/mixData.js";
import { median } from "./lib/stats.js";
import { CpuMeter } from "./lib/procStats.js";
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

async function commits(siteB: string, vmId: string): Promise<Committed[]> {
  const path = join(siteB, "ledger.sqlite");
  if (!existsSync(path)) return [];
  const store = getSqliteEventStore({ path, create: false });
  try {
    return (await store.readStream(`${RELATIONSHIP_STREAM_PREFIX}${vmId}`)).filter((e) => e.type === "CycleCommitted").map((e) => e.data as unknown as Committed);
  } finally {
    await store.close();
  }
}

async function waitForCommit(t: TwoSites, vmId: string, what: string, pick: (c: Committed) => boolean, timeoutMs: number): Promise<Committed> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = (await commits(t.siteB, vmId)).find(pick);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${tail(join(t.dir, "agent.log"))}\n${tail(join(t.siteB, "site.log"))}`);
    await sleep(250);
  }
}

/** With QEMU down: the previous round's bitmaps go, so the next agent starts as on a new VM. */
async function removeBitmaps(image: string): Promise<void> {
  const info = JSON.parse((await runTool("qemu-img", ["info", "--output=json", "-U", image])).stdout) as { "format-specific"?: { data?: { bitmaps?: Array<{ name: string }> } } };
  for (const b of info["format-specific"]?.data?.bitmaps ?? []) await runTool("qemu-img", ["bitmap", "--remove", image, b.name]);
}

function tail(file: string): string {
  return existsSync(file) ? readFileSync(file, "utf8").trim().split("\n").slice(-10).join("\n") : "(no log)";
}

/** A pino line of `file` with message `msg` about VM `vm` whose `seq` is `seq`. */
function logLine(file: string, msg: string, seq: number, vm: string): Record<string, unknown> | undefined {
  if (!existsSync(file)) return undefined;
  for (const line of readFileSync(file, "utf8").split("\n")) {
    if (!line.includes(msg)) continue;
    try {
      const j = JSON.parse(line) as Record<string, unknown>;
      if (j.seq === seq && j.vm === vm) return j;
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
 * rewritten in scattered 64 KiB blocks of random data, so its bitmaps are gone; the restarted VM
 * is resynced by comparison (the agent reads and hashes every 64 KiB chunk, the replica sends
 * its newest point's chunk hashes, only differing chunks travel). Both figures are cut-off ->
 * durable commit from site B's ledger. Each round pairs a full replication and a resync (a new
 * VM id on the same disk: a new relationship on B), so both see the same weather; the ratio is the
 * median of the rounds' ratios.
 */
export async function resync(ctx: BenchContext): Promise<BenchResult[]> {
  const sizeMiB = ctx.quick ? 512 : 4096;
  const rounds = Number(process.env.QR_BENCH_ROUNDS ?? 5);
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
    const siteB = await t.startSite(t.siteB);
    const siteQsdPidFile = join(t.siteB, "run", "storage-daemon.pid");
    // Every process either side runs (agent, primary QEMU, site, its storage daemon): the work a
    // cycle costs whatever the machine's speed, beside its wall time.
    const meter = (agentPid: number | undefined) =>
      new CpuMeter({
        agent: agentPid,
        "primary QEMU": t.vm.proc.pid,
        "site B": siteB.child.pid,
        "site B qemu-storage-daemon": existsSync(siteQsdPidFile) ? Number(readFileSync(siteQsdPidFile, "utf8").trim()) : undefined,
      });
    const cpuRatios: number[] = [];

    const blocks = Math.round((size * 0.01) / CHUNK);
    const sources = Array.from({ length: 8 }, (_, i) => {
      const p = join(dir, `random-${i}.bin`);
      writeFileSync(p, randomBytes(CHUNK));
      return p;
    });
    const fulls: number[] = [];
    const times: number[] = [];
    const notes: string[] = [];
    const crashVm = async () => {
      await t.vm.proc.kill("SIGKILL");
      rmSync(t.vm.qmpSocketPath, { force: true });
      rmSync(t.vm.nbdSocketPath, { force: true });
    };
    for (let round = 1; round <= rounds; round++) {
      const vmId = `vm${round}`;
      const agent = t.startAgent({ vmId });
      const fullMeter = meter(agent.child.pid);
      const full = await waitForCommit(t, vmId, `the full replication of ${vmId}`, (c) => c.kind === "full", 1800_000);
      const fullCpu = fullMeter.total();
      fulls.push(seconds(full));
      ctx.log(
        `round ${round}: full replication ${seconds(full).toFixed(2)} s, ${fullCpu.toFixed(1)} CPU-s in all (${fullMeter.report()}); agent read ${mib(size)} (allocated), sent ${mib(full.wireBytes)} (data ${mib(full.dataBytes)} + zeroes ${mib(full.zeroBytes)}); site wrote ${mib(full.dataBytes)} and hashed it for its index`,
      );

      // Scattered, distinct 64 KiB blocks: 1% of the disk, flushed so the crash keeps them.
      const offsets = new Set<number>();
      while (offsets.size < blocks) offsets.add(Math.floor(Math.random() * (size / CHUNK)) * CHUNK);
      const commands = [...offsets].map((o, i) => `write -q -s ${sources[i % sources.length]} ${o} ${CHUNK}`);
      for (let i = 0; i < commands.length; i += 500)
        await runTool("qemu-io", ["-f", "raw", t.vm.guestUri("vda"), ...commands.slice(i, i + 500).flatMap((c) => ["-c", c]), "-c", "flush"]);
      await crashVm();
      await t.vm.restart();
      const resyncMeter = meter(agent.child.pid);
      const c = await waitForCommit(t, vmId, `resync round ${round}`, (x) => x.kind === "resync" && x.cycleSeq > full.cycleSeq, 1800_000);
      const resyncCpu = resyncMeter.total();
      cpuRatios.push(fullCpu / resyncCpu);
      // QEMU's page faults since its restart: some read patterns make its allocator fault in every request buffer.
      const qemuFaults = `the primary's QEMU ${readFileSync(`/proc/${t.vm.proc.pid}/stat`, "utf8").split(") ")[1]!.split(" ")[7]} page faults`;
      times.push(seconds(c));
      const site = logLine(join(t.siteB, "site.log"), "replica chunk hashes sent", c.cycleSeq, vmId);
      // The agent logs its acknowledgement just after the site commits: give its log a moment.
      let agentLine = logLine(join(t.dir, "agent.log"), "cycle acknowledged", c.cycleSeq, vmId);
      for (let i = 0; !agentLine && i < 50; i++) {
        await sleep(100);
        agentLine = logLine(join(t.dir, "agent.log"), "cycle acknowledged", c.cycleSeq, vmId);
      }
      const note =
        `round ${round}: resync ${seconds(c).toFixed(2)} s (${(seconds(full) / seconds(c)).toFixed(1)}x, load average ${loadavg()[0]!.toFixed(1)}), ${resyncCpu.toFixed(1)} CPU-s in all (${(fullCpu / resyncCpu).toFixed(1)}x less than the full replication; ${resyncMeter.report()}), ${qemuFaults}; diverged ${blocks} x 64 KiB = ${mib(blocks * CHUNK)}; ` +
        `agent compared ${mib(c.comparedBytes ?? 0)}${agentLine?.knownZeroBytes ? ` (${mib(agentLine.knownZeroBytes as number)} of it known zero, not read)` : ""}, sent ${mib(c.wireBytes)} (data ${mib(c.dataBytes)} + zeroes ${mib(c.zeroBytes)}` +
        `${agentLine ? `, cycle ${agentLine.ms as number} ms: waiting for reads ${Math.round(agentLine.readWaitMs as number)} ms, hashing ${Math.round(agentLine.hashMs as number)} ms (in a worker thread, overlapping the reads), waiting for the replica's hashes ${Math.round((agentLine.replicaWaitMs as number | undefined) ?? 0)} ms, and for its first ones before the first read ${Math.round((agentLine.startWaitMs as number | undefined) ?? 0)} ms` : ""}); ` +
        `site ${site ? `sent ${mib(site.indexedBytes as number)} of hashes from its index and read ${mib(site.hashedBytes as number)} in ${site.ms as number} ms` : "?"}, wrote ${mib(c.dataBytes)}`;
      ctx.log(note);
      notes.push(note);
      // The next round starts as a new VM on the same disk: no agent, no bitmaps.
      await agent.kill("SIGTERM");
      await crashVm();
      await removeBitmaps(t.vm.disks[0]!.path);
      await t.vm.restart();
    }
    // Both sides' logs outlive the scratch when asked (timelines of a resync: cut-off, reads, commit).
    const keep = process.env.QR_BENCH_KEEP_LOGS;
    if (keep) {
      mkdirSync(keep, { recursive: true });
      copyFileSync(join(t.dir, "agent.log"), join(keep, "agent.log"));
      copyFileSync(join(t.siteB, "site.log"), join(keep, "site.log"));
    }
    return [
      {
        name: "resync",
        description: `resync by comparison of a ${sizeMiB} MiB disk (the mix) diverged by 1% in scattered 64 KiB blocks, after kill -9 of the primary's QEMU; cut-off -> commit, median of ${rounds} rounds (${times.map((x) => x.toFixed(2)).join(", ")} s), each paired with a full replication; BLAKE3 per 64 KiB chunk, the replica's from its index`,
        value: median(times),
        unit: "s",
        baseline: median(fulls),
        baselineDescription: `full replication of the same disk in the same rounds (${fulls.map((x) => x.toFixed(2)).join(", ")} s; agent read ${mib(size)}, site wrote and hashed the data); CPU-s of all four processes, full replication against resync: ${median(cpuRatios).toFixed(1)}x less (rounds ${cpuRatios.map((x) => x.toFixed(1)).join(", ")}x)`,
        ratio: median(fulls.map((f, i) => f / times[i]!)),
        goal: ">= 5x",
      },
    ];
  } finally {
    await cleanup.runAll();
  }
}
