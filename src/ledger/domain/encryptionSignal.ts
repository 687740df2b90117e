/**
 * The encryption signal: what share of a disk's changed bytes did not compress, judged against
 * that disk's own history. Ransomware that encrypts files in place turns formerly compressible
 * blocks into random ones, so the share jumps; a disk that was always incompressible (encrypted at
 * rest, compressed media) has a high baseline and cannot jump, so it never flags.
 *
 * Pure: the ledger's commitCycle judges with it and the relationship fold keeps the baseline with
 * it, so a change to these numbers changes the fold (bump RELATIONSHIP_FOLD_VERSION).
 */

/** A chunk counts as incompressible when zstd saved less than this share of it (or it was sent raw). */
export const INCOMPRESSIBLE_RATIO = 0.97;

export const ENCRYPTION_SIGNAL = {
  /** A cycle that changed fewer bytes on a disk is not judged: a few blocks say nothing. */
  minSampleBytes: 1024 * 1024,
  /** The baseline judges only after this many samples of at least `minSampleBytes`... */
  minBaselinePoints: 3,
  /** ...and this many bytes in all. */
  minBaselineBytes: 4 * 1024 * 1024,
  /** Suspect when the share is this far above the baseline's share... */
  minJump: 0.4,
  /** ...and at least this share of the changed bytes did not compress. */
  minShare: 0.6,
  /** Weight of one full-size sample in the moving baseline; a smaller sample weighs less. */
  alpha: 0.3,
  /** A sample of this many bytes has the full weight `alpha`. */
  fullWeightBytes: 16 * 1024 * 1024,
} as const;

/** One disk's share of one cycle. */
export interface CompressionSample {
  /** Changed data bytes (zero ranges excluded: they are not data). */
  dataBytes: number;
  /** Of those, bytes in chunks that did not compress (see INCOMPRESSIBLE_RATIO). */
  incompressibleBytes: number;
}

/** A disk's moving share of incompressible changed bytes, over its clean points. */
export interface EncryptionBaseline {
  readonly share: number;
  /** Samples of at least `minSampleBytes` folded in. */
  readonly points: number;
  readonly bytes: number;
}

export type EncryptionVerdict =
  | { kind: "suspect"; share: number; baselineShare: number }
  | { kind: "clean"; share: number }
  /** Not judged: too few bytes in the sample, or too little history. */
  | { kind: "unjudged"; share: number; why: "small-sample" | "no-baseline" };

export function shareOf(sample: CompressionSample): number {
  return sample.dataBytes > 0 ? Math.min(1, sample.incompressibleBytes / sample.dataBytes) : 0;
}

export function judgeSample(baseline: EncryptionBaseline | undefined, sample: CompressionSample): EncryptionVerdict {
  const k = ENCRYPTION_SIGNAL;
  const share = shareOf(sample);
  if (sample.dataBytes < k.minSampleBytes) return { kind: "unjudged", share, why: "small-sample" };
  if (!baseline || baseline.points < k.minBaselinePoints || baseline.bytes < k.minBaselineBytes) return { kind: "unjudged", share, why: "no-baseline" };
  if (share >= k.minShare && share - baseline.share >= k.minJump) return { kind: "suspect", share, baselineShare: baseline.share };
  return { kind: "clean", share };
}

/**
 * The baseline after a clean (or unjudged) sample: a moving average weighted by the sample's size,
 * so a cycle of a few blocks barely moves it. The first sample with data sets it.
 */
export function nextBaseline(baseline: EncryptionBaseline | undefined, sample: CompressionSample): EncryptionBaseline | undefined {
  const k = ENCRYPTION_SIGNAL;
  if (sample.dataBytes <= 0) return baseline;
  const share = shareOf(sample);
  const counted = sample.dataBytes >= k.minSampleBytes ? 1 : 0;
  if (!baseline) return { share, points: counted, bytes: sample.dataBytes };
  const weight = k.alpha * Math.min(1, sample.dataBytes / k.fullWeightBytes);
  // The first full samples weigh more, so a baseline born of one tiny cycle is soon corrected.
  const w = baseline.points < k.minBaselinePoints ? Math.max(weight, sample.dataBytes / (baseline.bytes + sample.dataBytes)) : weight;
  return { share: baseline.share + w * (share - baseline.share), points: baseline.points + counted, bytes: baseline.bytes + sample.dataBytes };
}
