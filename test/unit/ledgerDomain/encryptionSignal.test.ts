/**
 * The encryption signal's judgement (pure): a disk's share of changed bytes that did not compress,
 * against its own moving baseline. Realistic disk histories, sample by sample.
 */
import { describe, expect, it } from "vitest";
import { ENCRYPTION_SIGNAL, judgeSample, nextBaseline, type CompressionSample, type EncryptionBaseline, type EncryptionVerdict } from "../../../src/ledger/index.js";

const MiB = 1024 * 1024;
const sample = (dataMiB: number, share: number): CompressionSample => ({ dataBytes: Math.round(dataMiB * MiB), incompressibleBytes: Math.round(dataMiB * MiB * share) });

/** Feeds a history the way the ledger does: judge each sample, fold only the ones not suspect. */
function replay(history: CompressionSample[]): { verdicts: EncryptionVerdict["kind"][]; baseline: EncryptionBaseline | undefined } {
  let baseline: EncryptionBaseline | undefined;
  const verdicts: EncryptionVerdict["kind"][] = [];
  for (const s of history) {
    const v = judgeSample(baseline, s);
    verdicts.push(v.kind);
    if (v.kind !== "suspect") baseline = nextBaseline(baseline, s);
  }
  return { verdicts, baseline };
}

const repeat = <T>(n: number, f: (i: number) => T): T[] => Array.from({ length: n }, (_, i) => f(i));

describe("the encryption signal", () => {
  it("a disk writing logs (text compresses well) never flags, whatever the cycle sizes", () => {
    const { verdicts, baseline } = replay([sample(200, 0.02), ...repeat(40, (i) => sample(1 + (i % 7) * 3, 0.01 * (i % 3)))]);
    expect(verdicts).not.toContain("suspect");
    expect(baseline!.share).toBeLessThan(0.05);
  });

  it("a database disk with some compressed pages varies around its baseline without flagging", () => {
    const { verdicts } = replay([sample(500, 0.25), ...repeat(60, (i) => sample(8 + (i % 5) * 10, [0.15, 0.3, 0.4, 0.2, 0.35, 0.5][i % 6]!))]);
    expect(verdicts).not.toContain("suspect");
  });

  it("a disk random from the start (encrypted at rest) never flags, even on a burst of writes", () => {
    const { verdicts, baseline } = replay([sample(64, 0.99), ...repeat(20, (i) => sample(2 + i, 1)), sample(500, 1)]);
    expect(verdicts).not.toContain("suspect");
    expect(baseline!.share).toBeGreaterThan(0.95);
  });

  it("a compressible disk overwritten with random bytes flags the sample that jumps", () => {
    const history = [sample(100, 0.05), ...repeat(5, () => sample(4, 0.05)), sample(16, 0.98)];
    const { verdicts } = replay(history);
    expect(verdicts.slice(0, -1)).not.toContain("suspect");
    expect(verdicts.at(-1)).toBe("suspect");
    const v = judgeSample(replay(history.slice(0, -1)).baseline, history.at(-1)!);
    expect(v).toMatchObject({ kind: "suspect", share: expect.closeTo(0.98, 2), baselineShare: expect.closeTo(0.05, 1) });
  });

  it("keeps flagging a continued encryption: suspect samples do not move the baseline", () => {
    const { verdicts, baseline } = replay([sample(100, 0.05), ...repeat(5, () => sample(4, 0.05)), ...repeat(10, () => sample(16, 0.99))]);
    expect(verdicts.slice(-10)).toEqual(repeat(10, () => "suspect"));
    expect(baseline!.share).toBeLessThan(0.1);
  });

  it("does not judge small cycles: a few random blocks (a key file, a compressed log rotated) say nothing", () => {
    const before = replay([sample(100, 0.05), ...repeat(5, () => sample(4, 0.05))]).baseline;
    for (const bytes of [4096, 64 * 1024, 512 * 1024, ENCRYPTION_SIGNAL.minSampleBytes - 1]) {
      expect(judgeSample(before, { dataBytes: bytes, incompressibleBytes: bytes })).toMatchObject({ kind: "unjudged", why: "small-sample" });
    }
    // ...and many of them barely move the baseline.
    const { baseline } = replay([sample(100, 0.05), ...repeat(5, () => sample(4, 0.05)), ...repeat(30, () => ({ dataBytes: 64 * 1024, incompressibleBytes: 64 * 1024 }))]);
    expect(baseline!.share).toBeLessThan(0.25);
  });

  it("does not judge before the disk has a baseline of enough points and bytes", () => {
    expect(judgeSample(undefined, sample(50, 1))).toMatchObject({ kind: "unjudged", why: "no-baseline" });
    // A tiny initial copy (a mostly empty disk) and two small cycles are no history.
    const { verdicts } = replay([{ dataBytes: 40_000, incompressibleBytes: 0 }, sample(1, 0), sample(1, 0), sample(16, 1)]);
    expect(verdicts).toEqual(["unjudged", "unjudged", "unjudged", "unjudged"]);
  });

  it("a moderate rise is not a jump; a jump to a low share is not encryption", () => {
    const base = replay([sample(100, 0.1), ...repeat(5, () => sample(4, 0.1))]).baseline;
    expect(judgeSample(base, sample(16, 0.45)).kind).toBe("clean");
    const zero = replay([sample(100, 0), ...repeat(5, () => sample(4, 0))]).baseline;
    // 0.45 is far above 0 but under minShare: half the data still compressed.
    expect(judgeSample(zero, sample(16, 0.45)).kind).toBe("clean");
    expect(judgeSample(zero, sample(16, ENCRYPTION_SIGNAL.minShare)).kind).toBe("suspect");
  });

  it("a disk whose baseline drifted up slowly (more media files over weeks) adapts rather than flags", () => {
    const drift = repeat(80, (i) => sample(8, Math.min(0.9, 0.05 + i * 0.012)));
    expect(replay([sample(100, 0.05), ...drift]).verdicts).not.toContain("suspect");
  });

  it("the share is clamped and a sample without data leaves the baseline as it was", () => {
    const b: EncryptionBaseline = { share: 0.2, points: 5, bytes: 50 * MiB };
    expect(nextBaseline(b, { dataBytes: 0, incompressibleBytes: 0 })).toBe(b);
    expect(judgeSample(b, { dataBytes: 2 * MiB, incompressibleBytes: 3 * MiB })).toMatchObject({ kind: "suspect", share: 1 });
  });
});
