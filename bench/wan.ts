import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { benchScratch } from "./lib/cleanup.js";
import { loadavg } from "node:os";
import { rawTcpThrough, type LinkShape } from "./lib/delayLine.js";
import { startDelayLineProcess } from "./lib/delayLineProcess.js";
import { randomFillSync } from "node:crypto";
import { writeFileSync } from "node:fs";
import type { MixData } from "./lib/mixData.js";
import { refusals, replicateMix } from "./lib/replicateMix.js";
import { median } from "./lib/stats.js";
import type { BenchContext, BenchResult } from "./report.js";

const MiB = 1024 * 1024;

/** `bytes` of random data in 64 MiB segment files, laid out as replicateMix expects. */
function randomData(dir: string, bytes: number): MixData {
  const segments: MixData["segments"] = [];
  const buf = Buffer.alloc(64 * MiB);
  for (let offset = 0; offset < bytes; offset += buf.length) {
    const path = join(dir, `random-${segments.length}.bin`);
    const length = Math.min(buf.length, bytes - offset);
    randomFillSync(buf);
    writeFileSync(path, buf.subarray(0, length), { mode: 0o600 });
    segments.push({ path, offset, length });
  }
  return { totalBytes: bytes, segments, bytes: { random: bytes, zero: 0, text: 0 }, blocks: segments.length };
}
/** The link; QR_WAN_RTT_MS and QR_WAN_MBIT set others (e.g. RTT 0 to see the pipeline alone). */
const LINK: LinkShape = { rttMs: Number(process.env.QR_WAN_RTT_MS ?? 50), bitsPerSecond: Number(process.env.QR_WAN_MBIT ?? 1000) * 1e6 };
/**
 * The line stands in for a network, which costs the hosts no CPU: it runs in a process of its
 * own, at a higher priority than ours where that is allowed (root), so that on a loaded machine
 * the link does not slow down with the processes measured through it, nor differ between them and
 * the baseline (measured while they idle). QR_WAN_LINE_NICE=0 leaves it at ours.
 */
const LINE_NICE = Number(process.env.QR_WAN_LINE_NICE ?? -5);
const startLine = (target: string, shape: LinkShape) => startDelayLineProcess(target, shape, { priority: LINE_NICE });
const load = (): string =>
  loadavg()
    .map((l) => l.toFixed(1))
    .join(", ");

/**
 * wan: replication through a link of 50 ms round-trip time and 1 Gbit/s, against raw TCP through
 * the same link. `tc netem` is not available on these machines, so the link is a userspace delay
 * line (bench/lib/delayLine.ts) in front of site B: each direction releases data in order after
 * its serialisation time at 1 Gbit/s plus 25 ms, with many chunks in flight. The agent dials
 * site B through it (gRPC over mutual TLS, as always). Value: MiB/s of the cycle carrying
 * incompressible (random) data, (dataBytes + zeroBytes) / (committedAt - cutoffAt) from site B's
 * ledger; with random data that is also the wire's rate (wire bytes are logged). Baseline, same run, rounds interleaved while our
 * processes idle: one TCP connection through a fresh delay line of the same shape, written as
 * fast as it drains. Goal: at least 80% of the raw figure.
 */
export async function wan(ctx: BenchContext): Promise<BenchResult[]> {
  // 512 MiB is 5-10 s through the link: long enough for a rate, short enough for the bench's budget.
  const sizeMiB = ctx.quick ? 256 : 512;
  const rawMiB = ctx.quick ? 128 : 256;
  const rounds = ctx.quick ? 2 : 3;
  const { dir, cleanup } = benchScratch("qr-bench-wan-", ctx.log);
  ctx.log(`link ${LINK.rttMs} ms RTT, ${LINK.bitsPerSecond / 1e6} Mbit/s; delay line in its own process (nice ${LINE_NICE}); load average ${load()}`);
  try {
    // Incompressible: compression would let the cycle carry more than the link, zero blocks would
    // not cross it at all; random data makes changed bytes and wire bytes the same thing.
    const mix = randomData(dir, sizeMiB * MiB);
    const raw: number[] = [];
    const oursDir = join(dir, "ours");
    mkdirSync(oursDir);
    const ours = await replicateMix({
      dir: oursDir,
      mix,
      log: ctx.log,
      rounds,
      agentDials: async (site) => {
        const line = await startLine(site, LINK);
        cleanup.defer("close the delay line", () => line.close());
        ctx.log(`agent dials site B (${site}) through a delay line at ${line.address}: ${LINK.rttMs} ms RTT, ${LINK.bitsPerSecond / 1e9} Gbit/s`);
        return line.address;
      },
      beforeCycle: async (round) => {
        const s = await rawTcpThrough(LINK, rawMiB * MiB, startLine);
        raw[round - 1] = rawMiB / s;
        ctx.log(`round ${round} raw TCP: ${rawMiB} MiB in ${s.toFixed(2)} s, ${raw[round - 1]!.toFixed(1)} MiB/s (load average ${load()})`);
      },
    });
    const wire = ours.rounds.map((r) => (r.cycle.dataBytes + r.cycle.zeroBytes) / MiB / r.seconds);
    ours.rounds.forEach((r, i) =>
      ctx.log(
        `round ${i + 1} ours: cycle ${r.cycle.cycleSeq} ${r.seconds.toFixed(2)} s, ${(r.cycle.wireBytes / MiB).toFixed(0)} MiB on the wire (${(r.cycle.wireBytes / MiB / r.seconds).toFixed(1)} MiB/s), ` +
          `${wire[i]!.toFixed(1)} MiB/s of changed data (${(wire[i]! / raw[i]!).toFixed(2)}x raw); peak RSS agent ${(r.peak.hwm / 1024).toFixed(0)} MiB, site B ${(r.sitePeak.hwm / 1024).toFixed(0)} MiB; CPU ${r.cpu}`,
      ),
    );
    const failed = ours.rounds.flatMap((r) => r.failed);
    return [
      {
        name: "wan",
        description: `replication through ${LINK.rttMs} ms RTT, ${LINK.bitsPerSecond / 1e9} Gbit/s (userspace delay line), MiB/s of a ${sizeMiB} MiB cycle of random data, site and agent processes, mTLS, cut-off -> commit (median of ${rounds} interleaved rounds: ${wire.map((v) => v.toFixed(1)).join(", ")}${refusals(failed)})`,
        value: median(wire),
        unit: "MiB/s",
        baseline: median(raw),
        baselineDescription: `one raw TCP connection through the same link shape, ${rawMiB} MiB (${raw.map((v) => v.toFixed(1)).join(", ")})`,
        ratio: median(wire.map((v, i) => v / raw[i]!)),
        goal: ">= 0.8x",
      },
    ];
  } finally {
    await cleanup.runAll();
  }
}
