import { describeMix } from "./lib/mixData.js";
import { mixAgainstReference } from "./lib/mixRound.js";
import { refusals } from "./lib/replicateMix.js";
import { median } from "./lib/stats.js";
import type { BenchContext, BenchResult } from "./report.js";

const MiB = 1024 * 1024;

/**
 * e2e-throughput: MiB/s of changed data from the primary's dirty bitmap to a committed recovery
 * point, with the real site and agent processes, on a realistic mix (a quarter random, a quarter
 * zeroes, half log-like text). The figure is (dataBytes + zeroBytes) / (committedAt - cutoffAt) of
 * the cycle that carried the mix, from site B's ledger: cutoffAt is stamped by the agent when its
 * cut-off transaction returns, committedAt by the site once the point is flushed, fsynced and in
 * the ledger. So it covers fleece export, NBD reads, zero detection, checksums, zstd, gRPC over
 * mutual TLS, the site's NBD writes, flush, fsync and the ledger append.
 *
 * Baseline, same data, same run: nbdcopy | zstd -1 | socat (mutual TLS, the sites' CA and
 * certificates) into socat | zstd -d | nbdcopy --flush into a qemu-storage-daemon export of a
 * fresh qcow2, timed end to end. Rounds are interleaved on one two-site setup: each round writes
 * the mix into the primary, runs the reference while our processes idle, then lets the agent's
 * next cycle carry the mix. The ratio is the median of the rounds' ratios, so a round disturbed
 * by the shared machine moves neither side alone. The rounds are shared with agent-cpu-per-gib
 * (bench/lib/mixRound.ts): one run serves both.
 */
export async function e2eThroughput(ctx: BenchContext): Promise<BenchResult[]> {
  const { sizeMiB, rounds, mix, refs: refRuns, ours } = await mixAgainstReference(ctx);
  const refs = refRuns.map((r) => sizeMiB / r.seconds);
  const rates = ours.rounds.map((r) => sizeMiB / r.seconds);
  ours.rounds.forEach((r, i) => {
    const c = r.cycle;
    ctx.log(
      `round ${i + 1} ours: cycle ${c.cycleSeq} cut-off ${c.cutoffAt} -> committed ${c.committedAt}: ${r.seconds.toFixed(2)} s, ${rates[i]!.toFixed(1)} MiB/s (${(rates[i]! / refs[i]!).toFixed(2)}x); ` +
        `data ${(c.dataBytes / MiB).toFixed(0)} MiB + zeroes ${(c.zeroBytes / MiB).toFixed(0)} MiB, ${(c.wireBytes / MiB).toFixed(0)} MiB on the wire, ${c.extents} extents; ` +
        `site CycleBegin -> commit ${(c.durationMs / 1000).toFixed(2)} s, cut-off -> CycleBegin ${(r.seconds - c.durationMs / 1000).toFixed(2)} s` +
        (r.agentCycleMs !== undefined ? `, agent CycleBegin -> ack+confirm ${(r.agentCycleMs / 1000).toFixed(2)} s` : ""),
    );
    ctx.log(
      `round ${i + 1} ours CPU from the end of the write to the commit${r.failed.length ? " (refused attempts included)" : ""}: ${r.cpuSeconds.toFixed(1)} s in all (${r.cpu})`,
    );
  });
  const ratios = rates.map((v, i) => v / refs[i]!);
  const failed = ours.rounds.flatMap((r) => r.failed);
  return [
    {
      name: "e2e-throughput",
      description: `changed data from dirty bitmap to committed point, site and agent processes, mTLS (${sizeMiB} MiB: ${describeMix(mix)}; cut-off -> commit from site B's ledger; median of ${rounds} interleaved rounds: ${rates.map((r) => r.toFixed(0)).join(", ")} MiB/s${refusals(failed)})`,
      value: median(rates),
      unit: "MiB/s",
      baseline: median(refs),
      baselineDescription: `nbdcopy | zstd -1 | socat mTLS | zstd -d | nbdcopy --flush into a qemu-storage-daemon qcow2 export, same data, one run per round (${refs.map((r) => r.toFixed(0)).join(", ")})`,
      ratio: median(ratios),
      goal: ">= 2.0x",
    },
  ];
}
