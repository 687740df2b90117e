/**
 * Retention tiers on real qcow2 chains: a real site storage daemon, a real SQLite ledger and the
 * site's own Relationships, with points committed through them on an injected clock over a
 * simulated span. After every cycle retention runs its merges (real qemu-img); the points left
 * must be exactly the ones the tiers promise, and each must read byte for byte as the primary did
 * at its cut-off.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../../src/common/logger.js";
import {
  RecoveryPointsProjection,
  executeCommand,
  getSqliteEventStore,
  startMerge,
  startTestFailover,
  stopTestFailover,
  type EventStore,
  type RelationshipState,
} from "../../../src/ledger/index.js";
import type { RetentionSpec } from "../../../src/policy/retentionPlan.js";
import { convertImage, runTool } from "../../../src/qemu/processes/index.js";
import { Relationships } from "../../../src/site/relationships/relationships.js";
import { ReplicaStorage, SiteStorageDaemon } from "../../../src/storage/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const MiB = 1024 * 1024;
const MIN = 60_000;
const H = 60 * MIN;
const D = 24 * H;
const VM = "vm1";
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Site {
  dir: string;
  store: EventStore;
  daemon: SiteStorageDaemon;
  storage: ReplicaStorage;
  relationships: Relationships;
  clock: { now: number };
}

async function openSite(dir: string, spec: RetentionSpec, clock: { now: number }): Promise<Site> {
  const store = getSqliteEventStore({ path: join(dir, "ledger.db") });
  const daemon = await SiteStorageDaemon.start(join(dir, "run"));
  const storage = new ReplicaStorage(join(dir, "storage"), daemon);
  const relationships = new Relationships(store, storage, { siteId: "site-b", defaultMaxPoints: 24 }, silentLogger, {
    retentionFor: () => spec,
    now: () => clock.now,
  });
  const site = { dir, store, daemon, storage, relationships, clock };
  cleanups.push(() => closeSite(site));
  return site;
}

async function closeSite(site: Site): Promise<void> {
  await site.daemon.stop().catch(() => undefined);
  await Promise.resolve(site.store.close()).catch(() => undefined);
}

/** The primary: a disk model in memory, changed with random bytes, hashed at every cut-off. */
class Primary {
  readonly disk: Buffer;
  constructor(readonly sizeBytes: number) {
    this.disk = Buffer.alloc(sizeBytes);
  }
  hash(): string {
    return createHash("sha256").update(this.disk).digest("hex");
  }
}

const sha256OfImage = async (path: string, dir: string): Promise<string> => {
  const raw = join(dir, "check.raw");
  await convertImage(path, raw, { srcFormat: "qcow2", dstFormat: "raw" });
  const h = createHash("sha256").update(readFileSync(raw)).digest("hex");
  rmSync(raw);
  return h;
};

/** One cycle, as the data plane runs it: begin, the changed extents, commit. */
async function cycle(
  site: Site,
  primary: Primary,
  seq: number,
  generation: number,
  consistency: "application" | "crash",
  changes: Array<{ offset: number; data: Buffer }>,
  full = false,
) {
  for (const c of changes) c.data.copy(primary.disk, c.offset);
  const cutoffAt = new Date(site.clock.now);
  const point = await site.relationships.beginCycle({
    vmId: VM,
    seq,
    kind: full ? "full" : "incremental",
    generation,
    cutoffAt,
    disks: [{ diskId: "vda", sizeBytes: primary.sizeBytes }],
  });
  for (const c of full ? [{ offset: 0, data: primary.disk }] : changes) await point.disk("vda")!.write(c.offset, c.data);
  const bytes = changes.reduce((n, c) => n + c.data.length, 0);
  const r = await site.relationships.commitCycle({
    vmId: VM,
    seq,
    kind: full ? "full" : "incremental",
    generation,
    cutoffAt,
    consistency,
    point,
    dataBytes: bytes,
    zeroBytes: 0,
    wireBytes: bytes,
    extents: changes.length,
    durationMs: 1,
  });
  return { pointId: r.pointId, hash: primary.hash() };
}

async function hello(site: Site, primary: Primary): Promise<number> {
  return (
    await site.relationships.acceptHello({
      vmId: VM,
      primarySiteId: "site-a",
      primaryIdentity: "agent.site-a",
      presentedGeneration: 0,
      disks: [{ diskId: "vda", sizeBytes: primary.sizeBytes }],
    })
  ).generation;
}

/** Every listed point reads as the primary did at its cut-off; no image the ledger does not name. */
async function expectPointsIdentical(site: Site, hashes: Map<string, string>, label: string): Promise<void> {
  const state = await site.relationships.load(VM);
  for (const p of state.points) expect(await sha256OfImage(p.disks[0]!.imagePath, site.dir), `${label}: ${p.pointId}`).toBe(hashes.get(p.pointId));
  const files = readdirSync(site.storage.diskDir(VM, "vda"))
    .filter((f) => f.endsWith(".qcow2"))
    .sort();
  expect(files, `${label}: the images on disk`).toEqual(state.points.map((p) => p.disks[0]!.imagePath.split("/").pop()!).sort());
}

/** What the tiers promise, from the full history of cycles (not from what thinning left). */
function promised(history: Array<{ pointId: string; cutoffMs: number; consistency: string }>, spec: RetentionSpec, nowMs: number, held: ReadonlySet<string>): string[] {
  const out = new Set<string>(held);
  for (const h of history.slice(-spec.minPoints)) out.add(h.pointId);
  for (const tier of spec.tiers) {
    const horizon = nowMs - tier.keepForSeconds * 1000;
    if (tier.everySeconds === 0) {
      for (const h of history) if (h.cutoffMs > horizon) out.add(h.pointId);
      continue;
    }
    const slotMs = tier.everySeconds * 1000;
    const bySlot = new Map<number, Array<{ pointId: string; consistency: string }>>();
    for (const h of history) {
      const slot = Math.floor(h.cutoffMs / slotMs);
      if ((slot + 1) * slotMs > horizon) bySlot.set(slot, [...(bySlot.get(slot) ?? []), h]);
    }
    for (const all of bySlot.values()) out.add((all.filter((h) => h.consistency === "application").at(-1) ?? all[0]!).pointId);
  }
  return history.filter((h) => out.has(h.pointId)).map((h) => h.pointId);
}

/** Holds a point's chain open read-only, as the test failover's VM does. */
function holdChain(imagePath: string): ChildProcess {
  const child = spawn("qemu-io", ["-r", "-f", "qcow2", imagePath], { stdio: ["pipe", "ignore", "ignore"] });
  cleanups.push(() => {
    child.kill("SIGKILL");
  });
  return child;
}

describe("retention tiers on real chains (injected clock)", { timeout: 900_000 }, () => {
  it("a simulated month of 3-hour cycles: after every cycle the points are exactly the promised ones, each byte-identical to the primary at its cut-off; a tested point is held", async () => {
    const tmp = makeTmpDir("qr-tiers-");
    cleanups.push(tmp.cleanup);
    const spec: RetentionSpec = {
      tiers: [
        { everySeconds: 0, keepForSeconds: 6 * 3600 },
        { everySeconds: 6 * 3600, keepForSeconds: 2 * 24 * 3600 },
        { everySeconds: 24 * 3600, keepForSeconds: 14 * 24 * 3600 },
        { everySeconds: 7 * 24 * 3600, keepForSeconds: 12 * 7 * 24 * 3600 },
      ],
      minPoints: 2,
    };
    // In the past: the site stamps commits with the real time, never before a cut-off.
    const clock = { now: Date.UTC(2026, 9, 1, 0, 7) };
    const site = await openSite(tmp.path, spec, clock);
    const primary = new Primary(16 * MiB);
    const generation = await hello(site, primary);
    const hashes = new Map<string, string>();
    const history: Array<{ pointId: string; cutoffMs: number; consistency: string }> = [];
    const stepMs: number[] = [];
    let test: { testId: string; pointId: string; holder: ChildProcess; until: number } | undefined;
    let heldSeen = 0;
    const cycles = (30 * D) / (3 * H);
    for (let seq = 1; seq <= cycles; seq++) {
      // Random bytes (never zero) at a few places; one 4 KiB change in a fixed spot every cycle.
      const changes = [0, 1, 2].map((k) => ({ offset: ((seq * 7 + k * 5) % 250) * 64 * 1024, data: randomBytes(64 * 1024) }));
      changes.push({ offset: 15 * MiB, data: randomBytes(4096) });
      const consistency = seq % 7 === 0 ? "application" : "crash";
      const r = await cycle(site, primary, seq, generation, consistency, seq === 1 ? [{ offset: 0, data: randomBytes(16 * MiB) }] : changes, seq === 1);
      hashes.set(r.pointId, r.hash);
      history.push({ pointId: r.pointId, cutoffMs: clock.now, consistency });

      // On day 2 a test failover opens a point that the tiers will not keep, for 3 days.
      if (!test && clock.now >= Date.UTC(2026, 9, 2, 10)) {
        const state = await site.relationships.load(VM);
        const point = state.points.at(-2)!;
        await executeCommand(site.store, VM, (s) => startTestFailover(s, { testId: "t1", pointId: point.pointId, startedAt: new Date(clock.now).toISOString() }));
        test = { testId: "t1", pointId: point.pointId, holder: holdChain(point.disks[0]!.imagePath), until: clock.now + 3 * D };
      }
      if (test && test.until > 0 && clock.now >= test.until) {
        test.holder.kill("SIGKILL");
        await new Promise((res) => (test!.holder.exitCode !== null || test!.holder.signalCode !== null ? res(undefined) : test!.holder.once("exit", res)));
        await executeCommand(site.store, VM, (s) => stopTestFailover(s, { testId: "t1", stoppedAt: new Date(clock.now).toISOString() }));
        test.until = 0;
      }
      for (;;) {
        const t0 = performance.now();
        const more = await site.relationships.retentionStep(VM);
        if (!more) break;
        stepMs.push(performance.now() - t0);
      }

      const state = await site.relationships.load(VM);
      const testRunning = test !== undefined && test.until > 0;
      const held = new Set(testRunning ? [test!.pointId] : []);
      if (testRunning) {
        heldSeen++;
        expect(
          state.points.map((p) => p.pointId),
          "the tested point is held",
        ).toContain(test!.pointId);
        // Only points above the test can go meanwhile: everything at or below it waits.
        const below = history.filter((h) => h.cutoffMs <= history.find((x) => x.pointId === test!.pointId)!.cutoffMs).map((h) => h.pointId);
        const kept = new Set(state.points.map((p) => p.pointId));
        const aboveExpected = promised(history, spec, clock.now, held).filter((id) => !below.includes(id));
        expect(
          state.points.map((p) => p.pointId).filter((id) => !below.includes(id)),
          `cycle ${seq}: points above the test`,
        ).toEqual(aboveExpected);
        expect([...kept].filter((id) => below.includes(id)).length).toBeGreaterThanOrEqual(1);
      } else {
        expect(
          state.points.map((p) => p.pointId),
          `cycle ${seq} at ${new Date(clock.now).toISOString()}`,
        ).toEqual(promised(history, spec, clock.now, held));
      }
      if (seq % 40 === 0 || seq === cycles) await expectPointsIdentical(site, hashes, `cycle ${seq}`);
      clock.now += 3 * H;
    }
    expect(heldSeen).toBeGreaterThan(20);
    const final = await site.relationships.load(VM);
    expect(final.points.map((p) => p.pointId)).not.toContain(test!.pointId);
    // The read model agrees with the aggregate, live and rebuilt.
    expect((await RecoveryPointsProjection.rebuild(site.store, VM)).list().map((p) => p.pointId)).toEqual(final.points.map((p) => p.pointId));
    // 2 of the last 6 h, 8-9 six-hourly, 14-15 daily, 5 weekly, overlapping.
    expect(final.points.length).toBeLessThanOrEqual(3 + 9 + 15 + 5);
    const days = new Set(final.points.map((p) => Math.floor(Date.parse(p.cutoffAt) / D)));
    expect(days.size).toBeGreaterThanOrEqual(14);
    expect(final.counters.mergesCompleted).toBe(cycles - final.points.length);
    const sorted = [...stepMs].sort((a, b) => a - b);
    console.log(
      `retention merge steps on a 16 MiB disk over the month: ${stepMs.length} steps, median ${sorted[sorted.length >> 1]!.toFixed(0)} ms, max ${sorted.at(-1)!.toFixed(0)} ms`,
    );
  });

  it("a kill -9 of qemu-img mid-fold, or a crash before the ledger records it: after restart every listed point is byte-identical (64 MiB disk)", async () => {
    const tmp = makeTmpDir("qr-thin-crash-");
    cleanups.push(tmp.cleanup);
    const clock = { now: Date.UTC(2026, 11, 1) };
    const keepAll: RetentionSpec = { tiers: [], minPoints: 100 };
    let site = await openSite(tmp.path, keepAll, clock);
    const primary = new Primary(64 * MiB);
    const generation = await hello(site, primary);
    const hashes = new Map<string, string>();
    // Point 2 changes half the disk, so folding it takes long enough to be killed in the middle.
    const plan = [
      [{ offset: 0, data: randomBytes(64 * MiB) }],
      [{ offset: 0, data: randomBytes(32 * MiB) }],
      [{ offset: 8 * MiB, data: randomBytes(MiB) }],
      [{ offset: 40 * MiB, data: randomBytes(MiB) }],
      [{ offset: 0, data: randomBytes(MiB) }],
    ];
    for (const [i, changes] of plan.entries()) {
      const r = await cycle(site, primary, i + 1, generation, "crash", changes, i === 0);
      hashes.set(r.pointId, r.hash);
      clock.now += 5 * MIN;
    }
    const pathOf = (s: RelationshipState, id: string) => s.points.find((p) => p.pointId === id)!.disks[0]!.imagePath;

    // 1. qemu-img rebase killed while it copies point 2 into point 3.
    await executeCommand(site.store, VM, (s) => startMerge(s, { pointId: "rp-2" }));
    let state = await site.relationships.load(VM);
    const rebase = spawn("qemu-img", ["rebase", "-b", "base.qcow2", "-F", "qcow2", pathOf(state, "rp-3")], { stdio: "ignore" });
    await new Promise((res) => rebase.once("spawn", res));
    await new Promise((res) => setTimeout(res, 30));
    rebase.kill("SIGKILL");
    const ended = await new Promise<{ code: number | null; signal: string | null }>((res) => rebase.once("exit", (code, signal) => res({ code, signal })));
    await closeSite(site);
    site = await openSite(tmp.path, keepAll, clock);
    await site.relationships.recover();
    state = await site.relationships.load(VM);
    expect(state.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-3", "rp-4", "rp-5"]);
    await expectPointsIdentical(site, hashes, `after qemu-img was ${ended.signal ? "killed mid-fold" : "done before the kill"}`);
    const check = await runTool("qemu-img", ["check", "--output=json", pathOf(state, "rp-3")], { allowExit: [0, 3] });
    expect(JSON.parse(check.stdout)).toMatchObject({ "check-errors": 0 });

    // 2. The fold of point 4 into 5 done, the site gone before RecoveryPointMerged.
    await executeCommand(site.store, VM, (s) => startMerge(s, { pointId: "rp-4" }));
    await site.storage.foldIntoNext(pathOf(state, "rp-3"), pathOf(state, "rp-5"));
    await closeSite(site);
    site = await openSite(tmp.path, keepAll, clock);
    await site.relationships.recover();
    state = await site.relationships.load(VM);
    expect(state.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-3", "rp-5"]);
    expect(existsSync(join(site.storage.diskDir(VM, "vda"), "rp-00000004.qcow2"))).toBe(false);
    await expectPointsIdentical(site, hashes, "after a crash before the ledger");

    // 3. One step's time on a 64 MiB disk: point 3 (1 MiB of its own, 32 MiB folded in from 2) into 5.
    const t0 = performance.now();
    await executeCommand(site.store, VM, (s) => startMerge(s, { pointId: "rp-3" }));
    expect(await site.relationships.retentionStep(VM)).toBe(true);
    const ms = performance.now() - t0;
    await expectPointsIdentical(site, hashes, "after a fold of 33 MiB of changes");
    // 4. While the next point is being written the daemon holds the chain open (image locks):
    // retention leaves it alone until the commit, then merges.
    keepAll.minPoints = 1;
    const open = await site.relationships.beginCycle({
      vmId: VM,
      seq: 6,
      kind: "incremental",
      generation,
      cutoffAt: new Date(clock.now),
      disks: [{ diskId: "vda", sizeBytes: 64 * MiB }],
    });
    state = await site.relationships.load(VM);
    const locked = await runTool("qemu-img", ["rebase", "-b", "base.qcow2", "-F", "qcow2", pathOf(state, "rp-5")], { allowExit: [0, 1] });
    expect(locked.stderr).toMatch(/lock/);
    expect(await site.relationships.retentionStep(VM)).toBe(false);
    expect((await site.relationships.load(VM)).points.map((p) => p.pointId)).toEqual(["rp-1", "rp-5"]);
    await open.disk("vda")!.write(0, primary.disk.subarray(0, 4096));
    await site.relationships.commitCycle({
      vmId: VM,
      seq: 6,
      kind: "incremental",
      generation,
      cutoffAt: new Date(clock.now),
      consistency: "crash",
      point: open,
      dataBytes: 4096,
      zeroBytes: 0,
      wireBytes: 4096,
      extents: 1,
      durationMs: 1,
    });
    hashes.set("rp-6", primary.hash());
    await site.relationships.applyRetention(VM);
    expect((await site.relationships.load(VM)).points.map((p) => p.pointId)).toEqual(["rp-6"]);
    await expectPointsIdentical(site, hashes, "after the guarded merges");
    console.log(
      `one thinning step on a 64 MiB disk (33 MiB of changes folded): ${ms.toFixed(0)} ms; qemu-img ${ended.signal ? "was killed mid-fold" : "finished before the kill"}`,
    );
  });
});
