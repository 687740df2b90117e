import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { NbdClient } from "../src/qemu/nbd/index.js";
import { runCli } from "../test/helpers/processes.js";
import { setupTwoSites } from "../test/helpers/twoSites.js";
import { benchScratch } from "./lib/cleanup.js";
import { committedCycles, waitAlive } from "./lib/ledgerCycles.js";
import { describeMix, generateMix } from "./lib/mixData.js";
import type { CommittedCycle } from "./lib/replicateMix.js";
import { median } from "./lib/stats.js";
import type { BenchContext, BenchResult } from "./report.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const RATE_MIB_S = 20;
const CHUNK = MiB;
/** Where the guest writes, round and round: far more than one cycle's worth, so every write is new dirt. */
const REGION = GiB;

/** Newest-point age, sampled every 100 ms over [from, to]: now - cutoffAt of the newest point committed by then. */
export function ageSamples(cycles: CommittedCycle[], from: number, to: number): number[] {
  const commits = cycles.map((c) => ({ at: Date.parse(c.committedAt), cutoff: Date.parse(c.cutoffAt) })).sort((a, b) => a.at - b.at);
  const out: number[] = [];
  let i = -1;
  let newestCutoff = Number.NaN;
  for (let t = from; t <= to; t += 100) {
    while (i + 1 < commits.length && commits[i + 1]!.at <= t) {
      i++;
      newestCutoff = Math.max(Number.isNaN(newestCutoff) ? -Infinity : newestCutoff, commits[i]!.cutoff);
    }
    if (!Number.isNaN(newestCutoff)) out.push((t - newestCutoff) / 1000);
  }
  return out;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}

/** Writes `data` round and round into the region at RATE_MIB_S, 1 MiB per request, paced by the clock, until `stop`. */
async function steadyWriter(nbd: NbdClient, data: Buffer, stop: () => boolean): Promise<{ bytes: number; seconds: number }> {
  const started = performance.now();
  const every = 1000 / (RATE_MIB_S * (MiB / CHUNK));
  let k = 0;
  while (!stop()) {
    const due = started + k * every;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    const at = (k * CHUNK) % data.length;
    await nbd.write((k * CHUNK) % REGION, data.subarray(at, at + CHUNK));
    k++;
  }
  return { bytes: k * CHUNK, seconds: (performance.now() - started) / 1000 };
}

/**
 * rpo-under-load: a guest writing 20 MiB/s steadily (1 MiB NBD writes into the primary's guest
 * export, paced by the clock, the realistic mix, round a 1 GiB region) while the VM replicates
 * under a `frequency: continuous` policy (default 1 s floor between cycles), site and agent
 * processes over mutual TLS. The RPO is the age of the newest recovery point: at every moment,
 * now - cutoffAt of the newest point committed by then (site B's ledger), sampled every 100 ms of
 * the load phases. Baseline, same run, phases interleaved: the same with the guest idle. Values:
 * the maximum and the 99th percentile. Goal: under 10 s (stretch 5 s).
 */
export async function rpoUnderLoad(ctx: BenchContext): Promise<BenchResult[]> {
  const rounds = ctx.quick ? 1 : 2;
  // QR_RPO_LOAD_SECONDS holds the load longer (the bench's 20-minute budget sets the default).
  const idleSeconds = 15;
  const loadSeconds = Number(process.env.QR_RPO_LOAD_SECONDS ?? 45);
  const { dir, cleanup } = benchScratch("qr-bench-rpo-", ctx.log);
  try {
    const mix = generateMix(dir, 64 * MiB);
    const data = Buffer.concat(mix.segments.map((s) => readFileSync(s.path)));
    const t = await setupTwoSites(dir, { diskBytes: REGION + 64 * MiB, intervalSeconds: 3600 });
    cleanup.defer("stop sites, agent and VM", () => t.stopAll());
    const site = await t.startSite(t.siteB);
    writeFileSync(join(dir, "continuous.yaml"), "name: continuous\nfrequency: continuous\nretention: { minPoints: 24 }\n");
    const applied = await runCli(["policy", "apply", join(dir, "continuous.yaml"), "--dir", t.siteB]);
    if (applied.code !== 0) throw new Error(`policy apply failed: ${applied.stderr}${applied.stdout}`);
    const agent = t.startAgent({ policy: "continuous" });
    const daemons = [site, agent];
    const logs = [join(dir, "agent.log"), join(t.siteB, "site.log")];
    await waitAlive("the initial replication", daemons, logs, async () => ((await committedCycles(t.siteB, "vm1")).some((c) => c.kind === "full") ? true : undefined), 300_000);
    const nbd = await NbdClient.connect({ socketPath: t.vm.nbdSocketPath, exportName: "guest-vda" });
    cleanup.defer("disconnect the writer", () => nbd.disconnect());
    const phases: Array<{ kind: "idle" | "load"; from: number; to: number; rate?: number }> = [];
    for (let round = 1; round <= rounds; round++) {
      let from = Date.now();
      await sleep(idleSeconds * 1000);
      phases.push({ kind: "idle", from, to: Date.now() });
      from = Date.now();
      let stop = false;
      const timer = setTimeout(() => (stop = true), loadSeconds * 1000);
      const w = await steadyWriter(nbd, data, () => stop);
      clearTimeout(timer);
      const rate = w.bytes / MiB / w.seconds;
      phases.push({ kind: "load", from, to: Date.now(), rate });
      if (daemons.some((d) => d.child.exitCode !== null || d.child.signalCode !== null)) throw new Error("the site or the agent exited during the load");
      ctx.log(`round ${round}: idle ${idleSeconds} s, then ${loadSeconds} s of writes at ${rate.toFixed(1)} MiB/s (${(w.bytes / MiB).toFixed(0)} MiB)`);
    }
    // The age at the end of the last phase needs the commits that followed it.
    await sleep(2000);
    const cycles = await committedCycles(t.siteB, "vm1");
    const stat = (kind: "idle" | "load") => {
      const per = phases.filter((p) => p.kind === kind).map((p) => ageSamples(cycles, p.from, p.to));
      const all = per.flat();
      const inPhases = cycles.filter((c) => phases.some((p) => p.kind === kind && Date.parse(c.cutoffAt) >= p.from && Date.parse(c.cutoffAt) <= p.to));
      return { max: Math.max(...all), p99: percentile(all, 99), med: median(all), cycles: inPhases };
    };
    const load = stat("load");
    const idle = stat("idle");
    const carried = load.cycles.reduce((n, c) => n + c.dataBytes + c.zeroBytes, 0) / MiB;
    const rates = phases.filter((p) => p.kind === "load").map((p) => p.rate!.toFixed(1));
    const cycleSecs = load.cycles.map((c) => (Date.parse(c.committedAt) - Date.parse(c.cutoffAt)) / 1000);
    const notes = `${load.cycles.length} cycles cut off under load carrying ${carried.toFixed(0)} MiB, cut-off -> commit median ${cycleSecs.length ? median(cycleSecs).toFixed(2) : "-"} s, max ${cycleSecs.length ? Math.max(...cycleSecs).toFixed(2) : "-"} s; median age ${load.med.toFixed(2)} s`;
    ctx.log(notes);
    ctx.log(`idle: ${idle.cycles.length} cycles, newest-point age max ${idle.max.toFixed(2)} s, p99 ${idle.p99.toFixed(2)} s`);
    const what = `age of the newest recovery point, guest writing ${rates.join(", ")} MiB/s (target ${RATE_MIB_S}; ${describeMix(mix)}) under a continuous policy, site and agent processes, mTLS, ${rounds}x${loadSeconds} s sampled every 100 ms (${notes})`;
    return [
      {
        name: "rpo-under-load",
        description: `maximum ${what}`,
        value: load.max,
        unit: "s",
        baseline: idle.max,
        baselineDescription: `the same with the guest idle, ${rounds}x${idleSeconds} s interleaved`,
        ratio: load.max / idle.max,
        goal: "value < 10 s (stretch 5 s)",
      },
      {
        name: "rpo-under-load-p99",
        description: `99th percentile ${what}`,
        value: load.p99,
        unit: "s",
        baseline: idle.p99,
        baselineDescription: "the same with the guest idle",
        ratio: load.p99 / idle.p99,
        goal: "value < 10 s (stretch 5 s)",
      },
    ];
  } finally {
    await cleanup.runAll();
  }
}
