/** One measured figure beside its baseline, measured in the same run. */
export interface BenchResult {
  name: string;
  description: string;
  value: number;
  unit: string;
  baseline: number;
  baselineDescription: string;
  /** value / baseline, or baseline / value when lower is better. */
  ratio: number;
  goal?: string;
}

export interface BenchContext {
  quick: boolean;
  log(message: string): void;
}

export type Benchmark = (ctx: BenchContext) => Promise<BenchResult[]>;

export function formatResult(r: BenchResult): string {
  const v = (n: number) => (n >= 100 ? n.toFixed(0) : n.toFixed(2));
  return (
    `${r.name}: ${r.description}: ${v(r.value)} ${r.unit} | baseline (${r.baselineDescription}): ${v(r.baseline)} ${r.unit} | ` +
    `ratio ${r.ratio.toFixed(2)}x${r.goal ? ` (goal ${r.goal})` : ""}`
  );
}
