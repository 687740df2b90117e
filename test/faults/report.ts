import { writeFileSync } from "node:fs";
import { FAULT_KINDS, type FaultKind } from "./faultKinds.js";

export interface FaultRecord {
  n: number;
  kind: FaultKind;
  moment: string;
  detail: string;
  recovered: boolean;
  recoverMs?: number;
  operatorMessage?: string;
}

export interface CampaignReport {
  seed: number;
  faultsPlanned: number;
  faults: FaultRecord[];
  byKind: Record<string, { injected: number; recovered: number; medianRecoverMs: number | null; maxRecoverMs: number | null }>;
  /** Faults per moment they were injected at (mid-cycle, during a test failover, ...). */
  byMoment: Record<string, number>;
  recoveries: number;
  invariantChecks: number;
  violations: string[];
  recoverMs: { median: number | null; max: number | null };
  pointsChecked: number;
  /** Points that caught a big write half done at their cut-off, matched block for block. */
  tornWritePoints: number;
  /** Points read while retention merged them (marked merging or gone by the end of the read): not judged. */
  readsDuringMerge: number;
  guestWrites: number;
  /** Guest writes a full scratch failed on the sync=none cut-off path (not guest-safe, documented): not counted as violations. */
  guestWritesFailedOnSyncNone: string[];
  durationMs: number;
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
}

export function buildReport(r: Omit<CampaignReport, "byKind" | "byMoment" | "recoveries" | "recoverMs">): CampaignReport {
  const byKind: CampaignReport["byKind"] = {};
  for (const kind of FAULT_KINDS) {
    const of = r.faults.filter((f) => f.kind === kind);
    const ms = of.flatMap((f) => (f.recoverMs === undefined ? [] : [f.recoverMs]));
    byKind[kind] = { injected: of.length, recovered: of.filter((f) => f.recovered).length, medianRecoverMs: median(ms), maxRecoverMs: ms.length ? Math.max(...ms) : null };
  }
  const byMoment: Record<string, number> = {};
  for (const f of r.faults) byMoment[f.moment] = (byMoment[f.moment] ?? 0) + 1;
  const all = r.faults.flatMap((f) => (f.recoverMs === undefined ? [] : [f.recoverMs]));
  return { ...r, byKind, byMoment, recoveries: r.faults.filter((f) => f.recovered).length, recoverMs: { median: median(all), max: all.length ? Math.max(...all) : null } };
}

const sec = (ms: number | null) => (ms === null ? "-" : `${(ms / 1000).toFixed(1)} s`);

export function formatReport(r: CampaignReport): string {
  const lines = [
    `fault campaign, seed ${r.seed} (QR_FAULT_SEED=${r.seed} QR_FAULTS=${r.faultsPlanned} reproduces the schedule)`,
    `${"kind".padEnd(30)}${"injected".padStart(9)}${"recovered".padStart(10)}${"median".padStart(9)}${"max".padStart(9)}`,
    ...Object.entries(r.byKind).map(
      ([k, v]) => `${k.padEnd(30)}${String(v.injected).padStart(9)}${String(v.recovered).padStart(10)}${sec(v.medianRecoverMs).padStart(9)}${sec(v.maxRecoverMs).padStart(9)}`,
    ),
    `moments: ${Object.entries(r.byMoment)
      .map(([m, n]) => `${m} ${n}`)
      .join(", ")}`,
    `faults ${r.faults.length}, recovered ${r.recoveries}, time to recover median ${sec(r.recoverMs.median)} max ${sec(r.recoverMs.max)}`,
    `invariant checks ${r.invariantChecks} (points checked ${r.pointsChecked}, of which caught a write half done ${r.tornWritePoints}, read while merged away ${r.readsDuringMerge}; guest writes ${r.guestWrites}), violations ${r.violations.length}`,
    ...r.violations.map((v) => `  VIOLATION ${v}`),
    `guest writes failed by a full scratch on the sync=none path (known, not guest-safe): ${r.guestWritesFailedOnSyncNone.length}`,
    ...r.guestWritesFailedOnSyncNone.map((v) => `  ${v}`),
    `duration ${sec(r.durationMs)}`,
  ];
  return lines.join("\n");
}

export function writeReport(path: string, r: CampaignReport): void {
  writeFileSync(path, JSON.stringify(r, null, 2) + "\n");
}
