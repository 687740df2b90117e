/**
 * The fault campaign (`npm run test:faults`): real processes (site B, the agent, the primary's
 * qemu-storage-daemon VM, site B's own storage daemon) and, at random moments of cycles, merges
 * and retention, one fault after another of every kind in faultKinds.ts. After each, the design's
 * invariants are checked and the system must commit a point equal to the primary within a bound,
 * or have said what the operator must do. Seeded: QR_FAULT_SEED reproduces a schedule; QR_FAULTS
 * sets the number of faults (50 in CI, 500 for the full form). QR_FAULTS_JSON names the report file.
 */
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { makeTmpDir } from "../helpers/tmpDir.js";
import { cliJson, waitFor } from "../helpers/processes.js";
import { logTail } from "../helpers/crashGuest.js";
import { CAMPAIGN_DISK_BYTES, startCampaign, type Campaign } from "./campaignFixture.js";
import { EXPECTED_MESSAGE, FAULT_KINDS, FAULT_WEIGHT, inject, RECOVERY_BOUND_MS, type FaultContext, type FaultKind } from "./faultKinds.js";
import { failOverForTheFault, KINDS_NEEDING_CYCLES } from "./failoverMoment.js";
import { InvariantChecker } from "./invariants.js";
import { PrimaryModel } from "./primaryModel.js";
import { buildReport, formatReport, writeReport, type FaultRecord } from "./report.js";
import { Rng } from "./rng.js";

const SEED = process.env.QR_FAULT_SEED ? Number(process.env.QR_FAULT_SEED) : Math.floor(Math.random() * 2 ** 31);
const FAULTS = Number(process.env.QR_FAULTS ?? 50);
/** QR_FAULTS_MAX_MINUTES: no new fault after this long; the report says how many of the planned ran. */
const MAX_MS = process.env.QR_FAULTS_MAX_MINUTES ? Number(process.env.QR_FAULTS_MAX_MINUTES) * 60_000 : Number.POSITIVE_INFINITY;
const MOMENTS = ["mid-cycle", "between-cycles", "after-commit", "during-test-failover", "during-merge", "during-resync", "during-failover"] as const;
type Moment = (typeof MOMENTS)[number];

/** QR_FAULT_KINDS=kind,kind narrows a run to those kinds (to chase one finding). */
const ONLY = process.env.QR_FAULT_KINDS ? (process.env.QR_FAULT_KINDS.split(",") as FaultKind[]) : undefined;
const KINDS: readonly FaultKind[] = ONLY ?? FAULT_KINDS;

/** QR_FAULT_MOMENTS=mid-cycle,... narrows the moments likewise. */
const MOMENTS_RUN: readonly Moment[] = process.env.QR_FAULT_MOMENTS ? (process.env.QR_FAULT_MOMENTS.split(",") as Moment[]) : MOMENTS;

/** Every kind once (in a seeded order), then seeded weighted picks. */
function plan(rng: Rng, n: number): Array<{ kind: FaultKind; moment: Moment }> {
  const kinds: FaultKind[] = rng.shuffle([...KINDS]);
  const total = KINDS.reduce((s, k) => s + FAULT_WEIGHT[k], 0);
  while (kinds.length < n) {
    let x = rng.next() * total;
    kinds.push(KINDS.find((k) => (x -= FAULT_WEIGHT[k]) < 0) ?? KINDS[0]!);
  }
  return kinds.slice(0, Math.max(n, KINDS.length)).map((kind) => ({ kind, moment: rng.pick(momentsFor(kind)) }));
}

function momentsFor(kind: FaultKind): readonly Moment[] {
  const fit = MOMENTS_RUN.filter((m) => m !== "during-failover" || !KINDS_NEEDING_CYCLES.includes(kind));
  return fit.length ? fit : MOMENTS_RUN;
}

/**
 * What ends a moment: before the recovery check (a failover's cancel, returning the generation
 * replication goes on in) or after it (a test failover's stop).
 */
interface MomentEnd {
  beforeRecovery?: () => Promise<number>;
  afterRecovery?: () => Promise<void>;
}

/** Waits for the moment; returns what ends it. */
async function reachMoment(c: Campaign, model: PrimaryModel, rng: Rng, moment: Moment, checker: InvariantChecker, label: string, siteRestarted: () => boolean): Promise<MomentEnd> {
  const points = async () => (await c.t.relationship()).lastCycleSeq;
  if (moment === "mid-cycle") {
    // A big write makes the next cycle long enough to be caught while the site writes its overlay.
    void model.write("big").catch(() => undefined);
    const from = c.proxy.forwardedBytes;
    await waitFor("a cycle on the wire", () => (c.proxy.forwardedBytes - from > 128 * 1024 ? true : undefined), 5_000, 5).catch(() => undefined);
  } else if (moment === "after-commit") {
    const seq = await points();
    await waitFor("the next cycle to end", async () => ((await points()) > seq ? true : undefined), 10_000, 50).catch(() => undefined);
    await sleep(rng.int(0, 300));
  } else if (moment === "during-merge") {
    // Retention (6 points at 1 s cycles) merges after almost every commit: caught once one is recorded as started.
    await waitFor("a merge under way", async () => ((await c.t.relationship()).points.some((p) => p.merging) ? true : undefined), 15_000, 10).catch(() => undefined);
  } else if (moment === "during-resync") {
    // A primary killed under its writes leaves its bitmaps inconsistent: the agent resynchronises by comparison.
    await c.t.vm.proc.kill("SIGKILL");
    await model.pause();
    await c.t.vm.restart();
    await model.reloadFromDisk();
    model.resume(() => rng.int(50, 400));
    await waitFor("a resynchronisation under way", async () => ((await c.t.relationship()).state === "resynchronising" ? true : undefined), 30_000, 10).catch(() => undefined);
  } else if (moment === "during-test-failover") {
    // Invariant 4: a test VM runs on a point's overlay through the fault; points and replication
    // carry on (checked as for any fault), and the operator's stop works afterwards.
    const started = await cliJson<{ testId: string }>(["failover", "vm1", "--test", "--dir", c.t.siteB]);
    await sleep(rng.int(0, 1000));
    return {
      afterRecovery: async () => {
        const stopped = await cliJson<{ stoppedTestIds: string[]; error?: string }>(["test-failover", "stop", "vm1", "--dir", c.t.siteB, "--test-id", started.testId]).catch(
          (e: Error) => ({ stoppedTestIds: [] as string[], error: e.message }),
        );
        // Test VMs die with the site by design; the restarted site closes their tests in the ledger.
        const closedByRestart = siteRestarted() && /has no test failover '[^']+' \(running: none\)/.test(stopped.error ?? "");
        if (!stopped.stoppedTestIds.includes(started.testId) && !closedByRestart)
          checker.violation(`${label}: test failover ${started.testId} could not be stopped: ${JSON.stringify(stopped)}`);
        const left = Object.keys((await c.t.relationship()).testFailovers);
        if (left.length) checker.violation(`${label}: test failovers still recorded after the stop: ${left.join(", ")}`);
      },
    };
  } else if (moment === "during-failover") {
    const end = await failOverForTheFault(c, checker, label);
    await sleep(rng.int(0, 1000));
    return { beforeRecovery: end };
  } else {
    await sleep(rng.int(0, 1500));
  }
  return {};
}

interface Round {
  c: Campaign;
  model: PrimaryModel;
  checker: InvariantChecker;
  generation: number;
  diag: () => string;
  /** Guest writes failed by a full scratch on the sync=none path (see oneFault): reported, not violations. */
  notGuestSafe: string[];
}

/** After the fault is healed: writes stop, and a point cut after the last write must equal the primary. */
async function recover(r: Round, kind: FaultKind, label: string, healedAt: number): Promise<number | undefined> {
  const { c, model, checker } = r;
  await model.pause();
  const lastWrite = model.current.doneAt;
  const point = await waitFor(
    "a point cut after the last write",
    async () => (await c.t.relationship()).points.find((p) => Date.parse(p.cutoffAt) > lastWrite && !p.merging),
    RECOVERY_BOUND_MS[kind],
  ).catch(() => undefined);
  if (!point) {
    checker.violation(`${label}: no point committed within ${RECOVERY_BOUND_MS[kind] / 1000} s of the fault's end${r.diag()}`);
    return undefined;
  }
  const recoverMs = Date.now() - healedAt;
  const state = await c.t.relationship();
  await checker.checkPoints(state, label, () => c.t.relationship());
  await checker.newestEqualsPrimary(() => c.t.relationship(), label);
  checker.onePrimary(state, r.generation, label);
  return recoverMs;
}

/** One fault: its moment, the fault, the checks right after it, then recovery and its checks. */
async function oneFault(r: Round, faultRng: Rng, label: string, n: number, kind: FaultKind, moment: Moment): Promise<FaultRecord> {
  const { c, model, checker } = r;
  model.resume(() => faultRng.int(50, 400));
  const end = await reachMoment(c, model, faultRng, moment, checker, label, () => kind === "kill-site" || kind === "kill-replica-storage-daemon");
  const errorsBefore = model.writeErrors.length;
  const ctx: FaultContext = { c, model, rng: faultRng, checker };
  const injected = await inject(kind, ctx);
  const healedAt = Date.now();
  // Right after the fault, while processes restart: only whole points are listed.
  await checker.checkPoints(await c.t.relationship(), `${label} (just healed)`, () => c.t.relationship());
  if (end.beforeRecovery) r.generation = await end.beforeRecovery();
  const recoverMs = await recover(r, kind, label, healedAt);
  await end.afterRecovery?.();
  // Invariant 7: a guest write never fails because of replication (only a killed primary excuses it).
  // One known exception, reported apart: this primary is a qemu-storage-daemon VM with no guest
  // device, so its cut-offs use blockdev-backup sync=none, whose copy-before-write fails the
  // writer when the scratch fills within a cycle (the agent warns so at every cut-off; VMs with a
  // guest device get the guest-safe graph, tested in guestSafeAgent.test.ts).
  for (const e of model.writeErrors.slice(errorsBefore)) {
    if (kind === "kill-primary-qemu") continue;
    if (kind === "primary-scratch-full" && /No space left on device/.test(e)) r.notGuestSafe.push(`${label}: ${e}`);
    else checker.violation(`${label}: a guest write failed: ${e}`);
  }
  const expected = EXPECTED_MESSAGE[kind];
  if (expected && !(injected.operatorMessage && expected.test(injected.operatorMessage)))
    checker.violation(`${label}: the operator was not told (expected ${expected}, got ${JSON.stringify(injected.operatorMessage)})`);
  console.log(
    `${label}: ${injected.detail}; ${recoverMs === undefined ? "NOT recovered" : `recovered in ${(recoverMs / 1000).toFixed(1)} s`}${injected.operatorMessage ? ` — told: ${injected.operatorMessage.slice(0, 200)}` : ""}`,
  );
  return { n, kind, moment, detail: injected.detail, recovered: recoverMs !== undefined, recoverMs, operatorMessage: injected.operatorMessage };
}

describe("fault campaign", () => {
  it(`${FAULTS} faults of every kind, seed ${SEED}: invariants hold and the system recovers`, { timeout: 300_000 + FAULTS * 150_000 }, async () => {
    console.log(`fault campaign: seed ${SEED}, ${FAULTS} faults (QR_FAULT_SEED=${SEED} QR_FAULTS=${FAULTS} to reproduce)`);
    const started = Date.now();
    const tmp = makeTmpDir("qr-faults-");
    const schedule = plan(new Rng(SEED), FAULTS);
    for (const k of ONLY ?? []) if (!FAULT_KINDS.includes(k)) throw new Error(`QR_FAULT_KINDS: unknown kind ${k}; known: ${FAULT_KINDS.join(", ")}`);
    const faultRng = new Rng(SEED ^ 0x5bd1e995);
    const c = await startCampaign(tmp.path);
    const model = new PrimaryModel(c.t.vm, CAMPAIGN_DISK_BYTES, new Rng(SEED ^ 0x27d4eb2f), tmp.path);
    const checker = new InvariantChecker(model, tmp.path, c.storageDir, join(tmpdir(), `qreplica-faults-findings-${SEED}`));
    const diag = () => `\n--- agent (tail) ---\n${logTail(c.agentLog)}\n--- site B (tail) ---\n${logTail(c.siteLog)}`;
    const records: FaultRecord[] = [];
    const notGuestSafe: string[] = [];
    try {
      for (let i = 0; i < 4; i++) await model.write(i === 0 ? "big" : "small");
      await waitFor("the initial replication and a first incremental point", async () => ((await c.t.relationship()).points.length >= 2 ? true : undefined), 120_000).catch(
        (e: Error) => {
          throw new Error(e.message + diag());
        },
      );
      const r: Round = { c, model, checker, generation: (await c.t.relationship()).generation, diag, notGuestSafe };
      for (const [n, { kind, moment }] of schedule.entries()) {
        if (Date.now() - started > MAX_MS) {
          console.log(`time budget QR_FAULTS_MAX_MINUTES=${process.env.QR_FAULTS_MAX_MINUTES} spent: ${n} of ${schedule.length} faults injected`);
          break;
        }
        const record = await oneFault(r, faultRng, `fault ${n + 1}/${schedule.length} ${kind} (${moment})`, n + 1, kind, moment);
        records.push(record);
        if (!record.recovered) break;
      }
      // The end: with the agent stopped, the site discards what was in flight; nothing is left over.
      await model.pause();
      await c.agent.kill("SIGTERM");
      const stray = await waitFor(
        "no stray images in the replica storage",
        async () => {
          const left = checker.strayImages(await c.t.relationship());
          return left.length === 0 ? [] : undefined;
        },
        30_000,
      ).catch(async () => checker.strayImages(await c.t.relationship()));
      if (stray.length) checker.violation(`images in the replica storage that no point names, 30 s after the agent stopped: ${stray.join(", ")}`);
    } finally {
      await model.pause();
      await c.close();
      const report = buildReport({
        seed: SEED,
        faultsPlanned: schedule.length,
        faults: records,
        invariantChecks: checker.tally.checks,
        violations: checker.tally.violations,
        pointsChecked: checker.pointsChecked,
        tornWritePoints: checker.tornWrites,
        readsDuringMerge: checker.readsDuringMerge,
        guestWrites: model.writes,
        guestWritesFailedOnSyncNone: notGuestSafe,
        durationMs: Date.now() - started,
      });
      const jsonPath = process.env.QR_FAULTS_JSON ?? join(tmpdir(), `qreplica-faults-${SEED}.json`);
      writeReport(jsonPath, report);
      console.log(`${formatReport(report)}\nreport: ${jsonPath}`);
      if (!process.env.QR_KEEP) tmp.cleanup();
    }
    expect(checker.tally.violations).toEqual([]);
    if (MAX_MS === Number.POSITIVE_INFINITY) expect(records.length).toBe(schedule.length);
    for (const kind of KINDS)
      expect(
        records.some((f) => f.kind === kind && f.recovered),
        kind,
      ).toBe(true);
  });
});
