/**
 * Acceptance: kill -9 of the primary's qemu-system-x86_64 (the counter guest writing) between
 * cycles and in the middle of one. After QEMU restarts on the same disk the agent resyncs by
 * itself: the new point equals the primary, every older point is unchanged, only what diverged
 * travels, and the ledger tells ResyncRequired -> ResyncStarted -> CycleCommitted(resync).
 */
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { compareImages } from "../../src/qemu/processes/index.js";
import { makeTmpDir } from "../helpers/tmpDir.js";
import { waitFor, type Daemon } from "../helpers/processes.js";
import { setupTwoSites, type TwoSites } from "../helpers/twoSites.js";
import { CrashGuest, guestDisks, logTail, startGuestAgent } from "../helpers/crashGuest.js";
import { differingChunkBytes, ledgerEvents, pointContentHashes, resyncHashesSent, sequenceAfter } from "../helpers/resyncChecks.js";

const KiB = 1024;
const MiB = 1024 * KiB;
let env: TwoSites | undefined;
let guest: CrashGuest | undefined;
let cleanup: (() => void) | undefined;
afterEach(async () => {
  await env?.stopAll();
  await guest?.crash();
  if (!process.env.QR_KEEP) cleanup?.();
  env = undefined;
  guest = undefined;
});

interface ResyncCommit {
  cycleSeq: number;
  dataBytes: number;
  zeroBytes: number;
  wireBytes: number;
  comparedBytes?: number;
}

/** Regions the test overwrites later: allocated (and replicated) up front, so overwrites survive a kill -9. */
const REGIONS = Array.from({ length: 16 }, (_, i) => ({ offset: 8 * MiB + i * 3 * MiB, length: 64 * KiB }));
const RANDOM_AT = 56 * MiB;
/** Big enough that the agent is still reading it when QEMU dies. */
const RANDOM_BYTES = 160 * MiB;

async function protectedGuest(intervalSeconds: number, diskMiB: number): Promise<{ t: TwoSites; g: CrashGuest; diag: () => string; agent: Daemon }> {
  const tmp = makeTmpDir("qr-crash-");
  cleanup = tmp.cleanup;
  env = await setupTwoSites(tmp.path, { diskBytes: 16 * MiB, intervalSeconds });
  const t = env;
  guest = await CrashGuest.create(join(t.dir, "guest"), diskMiB);
  const g = guest;
  for (const r of REGIONS) await g.write(`write -P 0x5a ${r.offset} ${r.length}`);
  if (diskMiB * MiB >= RANDOM_AT + RANDOM_BYTES) await g.write(`write -P 0x5b ${RANDOM_AT} ${RANDOM_BYTES}`);
  await t.startSite(t.siteB);
  const agent = startGuestAgent(t, guestDisks(g), { intervalSeconds });
  const diag = () => `\n--- agent ---\n${logTail(join(t.dir, "crash-agent.log"))}\n--- site-b ---\n${logTail(join(t.siteB, "site.log"))}`;
  await waitFor("two points", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 120_000).catch((e: Error) => {
    throw new Error(e.message + diag());
  });
  return { t, g, diag, agent };
}

async function resyncCommit(t: TwoSites, fromEvent: number, diag: () => string): Promise<ResyncCommit> {
  return waitFor(
    "the resync point",
    async () => {
      const e = (await ledgerEvents(t.siteB)).slice(fromEvent).find((x) => x.type === "CycleCommitted" && (x.data as { kind: string }).kind === "resync");
      return e?.data as ResyncCommit | undefined;
    },
    180_000,
  ).catch((e: Error) => {
    throw new Error(e.message + diag());
  });
}

/** The checks both crash moments share, once QEMU is back (paused: the disk holds still for the comparison). */
async function expectResynced(t: TwoSites, g: CrashGuest, before: Snapshot, diag: () => string) {
  const commit = await resyncCommit(t, before.events, diag);
  const state = await t.relationship();
  const point = state.points.find((p) => p.cycleSeq === commit.cycleSeq)!;
  expect(state.state).toBe("replicating");
  const cmp = await compareImages(point.disks[0]!.imagePath, g.diskPath, { formatA: "qcow2", formatB: "qcow2" });
  expect(cmp.detail).toMatch(/identical/i);

  const kept = state.points.filter((p) => before.pointIds.includes(p.pointId));
  expect(kept.map((p) => p.pointId)).toEqual(before.pointIds);
  expect(await pointContentHashes(kept, t.dir)).toEqual(before.hashes);

  // Exactly the 64 KiB chunks in which the primary diverged from the newest point, far below the disk size.
  expect(commit.comparedBytes).toBe(before.diskBytes);
  expect(commit.dataBytes + commit.zeroBytes).toBe(before.divergedBytes);
  expect(commit.wireBytes).toBeLessThan(before.divergedBytes + 1 * MiB);
  expect(commit.dataBytes + commit.zeroBytes).toBeLessThan(before.diskBytes / 3);

  // The replica's side came from the newest point's chunk hash index, kept as it was written: not read.
  const sent = resyncHashesSent(t.siteB).find((l) => l.vm === "vm1" && l.seq === commit.cycleSeq);
  expect(sent).toMatchObject({ hashedBytes: 0, indexedBytes: before.diskBytes, unindexed: {} });

  const events = (await ledgerEvents(t.siteB)).slice(before.events);
  expect(sequenceAfter(events, 0, ["ResyncRequired", "ResyncStarted", "ResyncCompleted"])).toEqual(["ResyncRequired", "ResyncStarted", "ResyncCompleted"]);
  const required = events.find((e) => e.type === "ResyncRequired")!.data as { reason: string };
  const committedAt = events.findIndex((e) => e.type === "CycleCommitted" && (e.data as { kind: string }).kind === "resync");
  expect(committedAt).toBeGreaterThan(events.findIndex((e) => e.type === "ResyncStarted"));
  return required.reason;
}

interface Snapshot {
  hashes: Map<string, string>;
  pointIds: string[];
  events: number;
  /** What the crashed primary's disk holds that the newest point does not, in 64 KiB chunks. */
  divergedBytes: number;
  diskBytes: number;
}

/** Taken while QEMU is down: every point's content, and how far the disk diverged from the newest. */
async function snapshotBefore(t: TwoSites, g: CrashGuest, diskMiB: number): Promise<Snapshot> {
  const state = await t.relationship();
  const newest = state.points.at(-1)!.disks[0]!.imagePath;
  return {
    hashes: await pointContentHashes(state.points, t.dir),
    pointIds: state.points.map((p) => p.pointId),
    events: (await ledgerEvents(t.siteB)).length,
    divergedBytes: await differingChunkBytes({ path: newest, format: "qcow2" }, { path: g.diskPath, format: "qcow2" }, t.dir),
    diskBytes: diskMiB * MiB,
  };
}

describe("kill -9 of the primary's QEMU, then resync by comparison", { timeout: 480_000 }, () => {
  it("between cycles (bitmaps stored by an earlier clean stop, so left inconsistent)", async () => {
    const { t, g, diag, agent } = await protectedGuest(3, 64);
    // Between cycles for sure: the agent stops (an open cycle is aborted, its bitmaps merged back
    // into one) and is restarted after the crash. A clean stop of QEMU stores the recording bitmap
    // in the image; the crash right after the restart leaves it marked in use: inconsistent.
    const count = (await t.relationship()).points.length;
    await waitFor("the next point", async () => ((await t.relationship()).points.length > count ? true : undefined), 60_000);
    await agent.kill("SIGTERM");
    await agent.exited;
    await g.stop();
    await g.start({ paused: false });
    for (const r of REGIONS) await g.write(`write -P 0xa5 ${r.offset} ${r.length}`);
    await g.crash();

    const before = await snapshotBefore(t, g, 64);
    expect(before.divergedBytes).toBeGreaterThanOrEqual(REGIONS.length * 64 * KiB);
    await g.start({ paused: true });
    startGuestAgent(t, guestDisks(g), { intervalSeconds: 3 });
    const reason = await expectResynced(t, g, before, diag);
    expect(reason).toMatch(/^vda: BITMAP_INCONSISTENT \(bitmap qreplica-\d+ is inconsistent/);

    // Tracking was re-created at the resync's cut-off: the next cycles are incremental.
    await g.write(`write -P 0xc3 ${REGIONS[0]!.offset} 64k`);
    const wroteAt = Date.now();
    await waitFor("an incremental point after the resync", async () => ((await t.relationship()).points.some((p) => Date.parse(p.cutoffAt) > wroteAt) ? true : undefined), 60_000);
    const last = (await ledgerEvents(t.siteB)).filter((e) => e.type === "CycleCommitted").at(-1)!;
    expect((last.data as { kind: string }).kind).toBe("incremental");
  });

  it("in the middle of a cycle", async () => {
    const { t, g, diag } = await protectedGuest(1, 512);
    const random = join(t.dir, "random.bin");
    writeFileSync(random, randomBytes(RANDOM_BYTES));
    await g.write(`write -s ${random} ${RANDOM_AT} ${RANDOM_BYTES}`);
    const partials = () => {
      const dir = join(t.siteB, "storage", "vm1", "vda");
      return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(".partial")) : [];
    };
    // The cycle carrying the random write, well under way: a small cycle caught at its end could
    // still commit after the crash (its reads were done), and then nothing diverged.
    const allocated = (f: string) => statSync(join(t.siteB, "storage", "vm1", "vda", f), { throwIfNoEntry: false })?.blocks ?? 0;
    const partialBytes = () => partials().reduce((n, f) => Math.max(n, allocated(f) * 512), 0);
    await waitFor("the random write's cycle on its way to the site", () => (partialBytes() >= 8 * MiB ? true : undefined), 60_000, 5);
    // The replica's storage held still for the crash: the agent, held back by the stream's flow
    // control, cannot have read the rest of the cycle before QEMU dies (on a fast machine it could
    // otherwise finish reading and commit after the crash).
    const siteStorage = Number(readFileSync(join(t.siteB, "run", "storage-daemon.pid"), "utf8").trim());
    process.kill(siteStorage, "SIGSTOP");
    try {
      await g.crash();
    } finally {
      process.kill(siteStorage, "SIGCONT");
    }
    await waitFor("the site discarding the partial point", () => (partials().length === 0 ? true : undefined), 60_000);
    // The killed cycle never became a point: it is recorded as failed, and the random write diverged.
    await waitFor("the killed cycle recorded as failed", async () => ((await ledgerEvents(t.siteB)).some((e) => e.type === "CycleFailed") ? true : undefined), 60_000);

    const before = await snapshotBefore(t, g, 512);
    expect(before.divergedBytes).toBeGreaterThanOrEqual(RANDOM_BYTES);
    await g.start({ paused: true });
    const reason = await expectResynced(t, g, before, diag);
    expect(reason).toMatch(/^vda: BITMAP_(MISSING|INCONSISTENT)/);
  });
});
