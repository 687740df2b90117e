import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setupTwoSites, type TwoSites } from "../test/helpers/twoSites.js";
import type { Daemon } from "../test/helpers/processes.js";
import { benchScratch } from "./lib/cleanup.js";
import { committedCycles, cutoffToCommitMs, waitAlive } from "./lib/ledgerCycles.js";
import { median } from "./lib/stats.js";
import type { BenchContext, BenchResult } from "./report.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

interface Side {
  name: string;
  t: TwoSites;
  daemons: Daemon[];
  diskBytes: number;
  ms: number[];
}

/**
 * small-cycle: 1 MiB of random data changed on a 64 GiB sparse disk (qcow2, almost empty), from
 * the agent's cut-off to the committed point (cutoffAt -> committedAt of the cycle that carried
 * it, from site B's ledger). Baseline, same run, rounds interleaved: the same on a 64 MiB disk, so
 * the ratio shows what the disk's size costs a small cycle (the goal is < 250 ms absolute, and a
 * ratio near 1). Each side is a full two-site setup (site B and an agent, separate processes,
 * mutual TLS) with a 2 s interval; the 1 MiB lands at a random 64 KiB-aligned offset each round.
 */
export async function smallCycle(ctx: BenchContext): Promise<BenchResult[]> {
  const rounds = ctx.quick ? 5 : 9;
  const { dir, cleanup } = benchScratch("qr-bench-small-", ctx.log);
  try {
    const data = join(dir, "1mib.bin");
    writeFileSync(data, randomBytes(MiB));
    const sides: Side[] = [];
    for (const [name, diskBytes] of [
      ["64 GiB", 64 * GiB],
      ["64 MiB", 64 * MiB],
    ] as const) {
      const sideDir = join(dir, name.replace(" ", ""));
      mkdirSync(sideDir);
      const t = await setupTwoSites(sideDir, { diskBytes, intervalSeconds: 2 });
      cleanup.defer(`stop the ${name} side`, () => t.stopAll());
      const site = await t.startSite(t.siteB);
      const agent = t.startAgent();
      sides.push({ name, t, daemons: [site, agent], diskBytes, ms: [] });
    }
    for (const s of sides) {
      const started = Date.now();
      const logs = [join(s.t.dir, "agent.log"), join(s.t.siteB, "site.log")];
      await waitAlive(
        `the ${s.name} disk's initial replication`,
        s.daemons,
        logs,
        async () => ((await committedCycles(s.t.siteB, "vm1")).some((c) => c.kind === "full") ? true : undefined),
        300_000,
      );
      ctx.log(`${s.name}: initial replication committed after ${((Date.now() - started) / 1000).toFixed(1)} s`);
    }
    let skipped = 0;
    for (let round = 0; round < rounds; round++) {
      // Alternating who goes first: neither side always meets the busier moment.
      const order = round % 2 === 0 ? sides : [...sides].reverse();
      for (const s of order) {
        const logs = [join(s.t.dir, "agent.log"), join(s.t.siteB, "site.log")];
        const before = (await committedCycles(s.t.siteB, "vm1")).at(-1)?.cycleSeq ?? 0;
        const offset = Math.floor(Math.random() * ((s.diskBytes - MiB) / (64 * 1024))) * 64 * 1024;
        await s.t.vm.guestWrite("vda", [`write -q -s ${data} ${offset} 1M`]);
        // The first cycle after the write that carried data: normally all of the MiB; a cut-off
        // that fell during the write splits it, and that round is not counted.
        const cycle = await waitAlive(
          `the ${s.name} cycle carrying round ${round + 1}'s MiB`,
          s.daemons,
          logs,
          async () => (await committedCycles(s.t.siteB, "vm1")).find((c) => c.cycleSeq > before && c.dataBytes + c.zeroBytes > 0),
          60_000,
          100,
        );
        if (cycle.dataBytes !== MiB) {
          skipped++;
          ctx.log(`${s.name} round ${round + 1}: cycle ${cycle.cycleSeq} carried ${cycle.dataBytes} bytes (a cut-off split the write); not counted`);
          continue;
        }
        s.ms.push(cutoffToCommitMs(cycle));
      }
      ctx.log(`round ${round + 1}: ${sides.map((s) => `${s.name} ${s.ms.at(-1) ?? "-"} ms`).join(", ")}`);
    }
    const [big, small] = sides as [Side, Side];
    if (big.ms.length === 0 || small.ms.length === 0) throw new Error(`no round carried exactly 1 MiB (${skipped} split)`);
    const n = Math.min(big.ms.length, small.ms.length);
    return [
      {
        name: "small-cycle",
        description: `1 MiB changed on a 64 GiB sparse qcow2, agent cut-off -> committed point on site B (ledger cutoffAt -> committedAt), site and agent processes, mTLS (median of ${big.ms.length} rounds: ${big.ms.join(", ")} ms${skipped ? `; ${skipped} split rounds not counted` : ""})`,
        value: median(big.ms),
        unit: "ms",
        baseline: median(small.ms),
        baselineDescription: `the same 1 MiB on a 64 MiB disk, rounds interleaved (${small.ms.join(", ")} ms)`,
        ratio: median(big.ms.slice(0, n).map((v, i) => v / small.ms[i]!)),
        goal: "value < 250 ms",
      },
    ];
  } finally {
    await cleanup.runAll();
  }
}
