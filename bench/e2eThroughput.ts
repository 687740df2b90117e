import { copyFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { createImage } from "../src/qemu/processes/index.js";
import type { TwoSites } from "../test/helpers/twoSites.js";
import { benchScratch } from "./lib/cleanup.js";
import { describeMix, generateMix, writeMix } from "./lib/mixData.js";
import { runReferencePipeline, type ReferenceTls } from "./lib/referencePipeline.js";
import { refusals, replicateMix } from "./lib/replicateMix.js";
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
 * by the shared machine moves neither side alone.
 */
export async function e2eThroughput(ctx: BenchContext): Promise<BenchResult[]> {
  const sizeMiB = ctx.quick ? 256 : 1024;
  const rounds = ctx.quick ? 2 : 3;
  const { dir, cleanup } = benchScratch("qr-bench-e2e-", ctx.log);
  try {
    ctx.log(`generating ${sizeMiB} MiB of the mix`);
    const mix = generateMix(dir, sizeMiB * MiB);
    ctx.log(describeMix(mix));

    // The reference's source: a qcow2 holding exactly the mix, made offline.
    const refDir = join(dir, "ref");
    mkdirSync(refDir);
    const sourceImage = join(refDir, "ref-src.qcow2");
    await createImage(sourceImage, mix.totalBytes);
    await writeMix(sourceImage, mix, { format: "qcow2" });

    const tls = join(dir, "ref-tls");
    const refs: number[] = [];
    const oursDir = join(dir, "ours");
    mkdirSync(oursDir);
    const ours = await replicateMix({
      dir: oursDir,
      mix,
      log: ctx.log,
      rounds,
      afterSetup: async (t) => saveTls(t, tls),
      beforeCycle: async (round) => {
        const r = await runReferencePipeline({ dir: refDir, sourceImage, sizeBytes: mix.totalBytes, tls: tlsFiles(tls), log: ctx.log });
        refs.push(sizeMiB / r.seconds);
        ctx.log(`round ${round} reference: ${r.seconds.toFixed(2)} s, ${refs[refs.length - 1]!.toFixed(1)} MiB/s (copy verified identical to its source); CPU ${r.cpuSeconds.toFixed(1)} s in all (${r.cpu})`);
      },
    });
    const rates = ours.rounds.map((r) => sizeMiB / r.seconds);
    ours.rounds.forEach((r, i) => {
      const c = r.cycle;
      ctx.log(
        `round ${i + 1} ours: cycle ${c.cycleSeq} cut-off ${c.cutoffAt} -> committed ${c.committedAt}: ${r.seconds.toFixed(2)} s, ${rates[i]!.toFixed(1)} MiB/s (${(rates[i]! / refs[i]!).toFixed(2)}x); ` +
          `data ${(c.dataBytes / MiB).toFixed(0)} MiB + zeroes ${(c.zeroBytes / MiB).toFixed(0)} MiB, ${(c.wireBytes / MiB).toFixed(0)} MiB on the wire, ${c.extents} extents; ` +
          `site CycleBegin -> commit ${(c.durationMs / 1000).toFixed(2)} s, cut-off -> CycleBegin ${(r.seconds - c.durationMs / 1000).toFixed(2)} s` +
          (r.agentCycleMs !== undefined ? `, agent CycleBegin -> ack+confirm ${(r.agentCycleMs / 1000).toFixed(2)} s` : ""),
      );
      ctx.log(`round ${i + 1} ours CPU from the end of the write to the commit${r.failed.length ? " (refused attempts included)" : ""}: ${r.cpuSeconds.toFixed(1)} s in all (${r.cpu})`);
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
  } finally {
    await cleanup.runAll();
  }
}

/** Copies the sites' CA certificate, site B's and the agent's certificate and key out of the two-site setup. */
export function saveTls(t: TwoSites, dir: string): void {
  mkdirSync(dir, { mode: 0o700 });
  copyFileSync(join(t.caDir, "ca.crt"), join(dir, "ca.crt"));
  for (const [from, name] of [
    [join(t.siteB, "tls"), "site-b"],
    [join(t.dir, "agent-tls"), "agent-a"],
  ] as const) {
    copyFileSync(join(from, `${name}.crt`), join(dir, `${name}.crt`));
    copyFileSync(join(from, `${name}.key`), join(dir, `${name}.key`));
  }
}

export function tlsFiles(dir: string): ReferenceTls {
  return {
    caFile: join(dir, "ca.crt"),
    serverCert: join(dir, "site-b.crt"),
    serverKey: join(dir, "site-b.key"),
    clientCert: join(dir, "agent-a.crt"),
    clientKey: join(dir, "agent-a.key"),
  };
}
