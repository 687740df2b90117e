import { benchScratch } from "./lib/cleanup.js";
import { describeMix, generateMix } from "./lib/mixData.js";
import { refusals, replicateMix } from "./lib/replicateMix.js";
import type { BenchContext, BenchResult } from "./report.js";

const MiB = 1024 * 1024;

/**
 * agent-peak-rss: the agent process's peak RSS (VmHWM from /proc/<pid>/status, read as soon as
 * site B's ledger shows the cycle committed, while the agent still runs) after replicating one
 * 4 GiB cycle (--quick: 1 GiB) of the realistic mix, with the real site and agent processes.
 * Baseline: the same process's VmHWM right after its initial replication of an almost empty disk
 * (1 MiB of data), i.e. what the agent costs idle. Ratio = peak / idle; the goal is an absolute
 * peak below 200 MiB, whatever the cycle size (memory bounded by the reads in flight, not by the
 * data).
 * site-peak-rss: the same for the replica site's server process (VmHWM of site B, read at the same
 * moments), beside it.
 */
export async function agentPeakRss(ctx: BenchContext): Promise<BenchResult[]> {
  const sizeMiB = ctx.quick ? 1024 : 4096;
  const { dir, cleanup } = benchScratch("qr-bench-rss-", ctx.log);
  try {
    ctx.log(`generating ${sizeMiB} MiB of the mix`);
    const mix = generateMix(dir, sizeMiB * MiB);
    ctx.log(describeMix(mix));
    const run = await replicateMix({ dir: dir, mix, log: ctx.log });
    const round = run.rounds[0]!;
    const peak = round.peak.hwm / 1024;
    const idle = run.idle.hwm / 1024;
    ctx.log(
      `agent VmHWM ${idle.toFixed(1)} MiB after the initial replication, ${peak.toFixed(1)} MiB after the ${sizeMiB} MiB cycle (VmRSS then ${(round.peak.rss / 1024).toFixed(1)} MiB); ` +
        `site B VmHWM ${(run.siteIdle.hwm / 1024).toFixed(1)} MiB -> ${(round.sitePeak.hwm / 1024).toFixed(1)} MiB; cycle ${round.seconds.toFixed(1)} s, ${(sizeMiB / round.seconds).toFixed(1)} MiB/s; CPU: ${round.cpu}`,
    );
    return [
      {
        name: "agent-peak-rss",
        description: `agent VmHWM replicating one ${sizeMiB} MiB cycle (${describeMix(mix)}), separate processes${refusals(round.failed)}, goal < 200 MiB`,
        value: peak,
        unit: "MiB",
        baseline: idle,
        baselineDescription: "same agent process's VmHWM after its initial replication of an almost empty disk",
        ratio: peak / idle,
        goal: "< 200 MiB",
      },
      {
        name: "site-peak-rss",
        description: `site B (replica) server VmHWM over the same ${sizeMiB} MiB cycle, read at the same moment (VmRSS then ${(round.sitePeak.rss / 1024).toFixed(1)} MiB)`,
        value: round.sitePeak.hwm / 1024,
        unit: "MiB",
        baseline: run.siteIdle.hwm / 1024,
        baselineDescription: "same site process's VmHWM after the initial replication of an almost empty disk",
        ratio: round.sitePeak.hwm / run.siteIdle.hwm,
        goal: "< 200 MiB, like the agent",
      },
    ];
  } finally {
    await cleanup.runAll();
  }
}
