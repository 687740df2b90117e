import { readFileSync } from "node:fs";
import { nodeZlibZstdAvailable, nodeZlibZstdCodec, zstdNapiCodec, type Codec } from "../src/codec/index.js";
import { benchScratch } from "./lib/cleanup.js";
import { describeMix, generateMix } from "./lib/mixData.js";
import { median } from "./lib/stats.js";
import type { BenchContext, BenchResult } from "./report.js";

const MiB = 1024 * 1024;
/** The agent's capture piece (replica-agent/capture/extentReader.ts DEFAULT_PIECE_BYTES): one zstd frame each. */
const PIECE = 2 * MiB;
/** The agent config's default `compressionLevel`. */
const LEVEL = 1;

function seconds(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/**
 * zstd-codec: the two zstd implementations the codec layer can use, `node:zlib` (built into
 * Node >= 22.15) and the native addon `zstd-napi`, on the realistic mix cut into the agent's 2 MiB
 * pieces at the default level: compression as the agent calls it, decompression as the replica
 * site does (into a buffer of the expected size). Same process, interleaved rounds (the order
 * alternates), median of the rounds. Before timing, each one's frames are decoded by the other and
 * compared byte for byte. Value: node:zlib's MiB/s; baseline: zstd-napi's; ratio node:zlib /
 * zstd-napi (above 1: node:zlib is faster). getCodec("zstd") keeps whichever wins here.
 */
export async function zstdCodecs(ctx: BenchContext): Promise<BenchResult[]> {
  if (!nodeZlibZstdAvailable()) throw new Error(`zstd-codec needs node:zlib's zstd (Node >= 22.15); this is Node ${process.version}`);
  const sizeMiB = ctx.quick ? 32 : 128;
  const rounds = ctx.quick ? 5 : 9;
  const { dir, cleanup } = benchScratch("qr-bench-zstd-", ctx.log);
  try {
    const mix = generateMix(dir, sizeMiB * MiB);
    ctx.log(`${sizeMiB} MiB of the mix: ${describeMix(mix)}`);
    const data = Buffer.concat(mix.segments.map((s) => readFileSync(s.path)));
    const pieces: Buffer[] = [];
    for (let at = 0; at < data.length; at += PIECE) pieces.push(data.subarray(at, at + PIECE));

    const codecs = [nodeZlibZstdCodec, zstdNapiCodec] as const;
    const frames = new Map<Codec, Buffer[]>(codecs.map((c) => [c, pieces.map((p) => c.compress(p, LEVEL))]));
    for (const writer of codecs) {
      for (const reader of codecs) {
        frames.get(writer)!.forEach((f, i) => {
          if (!reader.decompress(f, pieces[i]!.length).equals(pieces[i]!)) throw new Error(`${reader.implementation} misread a frame of ${writer.implementation} (piece ${i})`);
        });
      }
      const bytes = frames.get(writer)!.reduce((n, f) => n + f.length, 0);
      ctx.log(`${writer.implementation}: ${(bytes / MiB).toFixed(1)} MiB of frames (${((100 * bytes) / data.length).toFixed(1)}% of the data); read back by both`);
    }

    const into = Buffer.allocUnsafe(PIECE);
    const times = new Map<Codec, { compress: number[]; decompress: number[] }>(codecs.map((c) => [c, { compress: [], decompress: [] }]));
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? codecs : ([...codecs].reverse() as Codec[]);
      for (const c of order) {
        const t = times.get(c)!;
        t.compress.push(
          seconds(() => {
            for (const p of pieces) c.compress(p, LEVEL);
          }),
        );
        const own = frames.get(c)!;
        t.decompress.push(
          seconds(() => {
            own.forEach((f, i) => {
              c.decompress(f, pieces[i]!.length, into);
            });
          }),
        );
      }
    }
    const rate = (c: Codec, op: "compress" | "decompress") => sizeMiB / median(times.get(c)![op]);
    const results: BenchResult[] = [];
    for (const op of ["compress", "decompress"] as const) {
      const zlib = rate(nodeZlibZstdCodec, op);
      const napi = rate(zstdNapiCodec, op);
      ctx.log(
        `${op}: node:zlib ${zlib.toFixed(0)} MiB/s, zstd-napi ${napi.toFixed(0)} MiB/s (rounds node:zlib ${times
          .get(nodeZlibZstdCodec)!
          [op].map((s) => (sizeMiB / s).toFixed(0))
          .join(", ")}; zstd-napi ${times
          .get(zstdNapiCodec)!
          [op].map((s) => (sizeMiB / s).toFixed(0))
          .join(", ")})`,
      );
      results.push({
        name: `zstd-${op}`,
        description: `node:zlib zstd ${op}ing ${sizeMiB} MiB of the mix in 2 MiB frames at level ${LEVEL}, median of ${rounds} interleaved rounds, Node ${process.versions.node}`,
        value: zlib,
        unit: "MiB/s",
        baseline: napi,
        baselineDescription: "zstd-napi on the same pieces in the same rounds",
        ratio: zlib / napi,
      });
    }
    return results;
  } finally {
    await cleanup.runAll();
  }
}
