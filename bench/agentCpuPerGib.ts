import { describeMix } from "./lib/mixData.js";
import { mixAgainstReference } from "./lib/mixRound.js";
import { refusals } from "./lib/replicateMix.js";
import { median } from "./lib/stats.js";
import type { BenchContext, BenchResult } from "./report.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/**
 * agent-cpu-per-gib: CPU seconds (user + system, all threads, /proc/<pid>/stat) the agent process
 * spends per GiB of changed data on the realistic mix, from the end of the guest's write to the
 * cycle's commit on site B: the production host's cost of replication (QEMU's NBD server, which
 * any backup reader pays, is printed apart in the log). Baseline, same data, rounds interleaved:
 * the sending side of the reference pipeline (nbdcopy | zstd -1 | socat with mutual TLS, bash
 * `times` of its stages), which does less (no checksums, no zero detection beyond nbdcopy's, no
 * ledger). Goal: at most 2.5 s per GiB. The rounds are e2e-throughput's (bench/lib/mixRound.ts):
 * selected together, the two cost one run.
 */
export async function agentCpuPerGib(ctx: BenchContext): Promise<BenchResult[]> {
  const { sizeMiB, rounds, mix, refs: refRuns, ours } = await mixAgainstReference(ctx);
  const gib = (sizeMiB * MiB) / GiB;
  const refs = refRuns.map((r) => r.senderCpuSeconds / gib);
  refRuns.forEach((r, i) => ctx.log(`round ${i + 1} reference sender: ${r.senderCpuSeconds.toFixed(2)} CPU-s (${refs[i]!.toFixed(2)} s/GiB); ${r.cpu}`));
  const perGib = ours.rounds.map((r) => r.agentCpuSeconds / gib);
  ours.rounds.forEach((r, i) => ctx.log(`round ${i + 1} ours: agent ${r.agentCpuSeconds.toFixed(2)} CPU-s (${perGib[i]!.toFixed(2)} s/GiB); ${r.cpu}`));
  const failed = ours.rounds.flatMap((r) => r.failed);
  return [
    {
      name: "agent-cpu-per-gib",
      description: `agent CPU seconds per GiB of changed data, ${sizeMiB} MiB of the mix (${describeMix(mix)}) per cycle, end of the write -> commit (median of ${rounds} interleaved rounds: ${perGib.map((v) => v.toFixed(2)).join(", ")}${refusals(failed)})`,
      value: median(perGib),
      unit: "CPU-s/GiB",
      baseline: median(refs),
      baselineDescription: `nbdcopy | zstd -1 | socat mTLS, the sending stages' CPU on the same data (${refs.map((v) => v.toFixed(2)).join(", ")})`,
      // Lower is better: how many times the reference's cost ours is.
      ratio: median(perGib.map((v, i) => v / refs[i]!)),
      goal: "value <= 2.5 CPU-s/GiB",
    },
  ];
}
