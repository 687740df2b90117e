/**
 * Item 6 of issue 8: the site killed (SIGKILL, by itself through QREPLICA_FAULT) at exactly the
 * moments between two durable steps, then restarted normally. Real site, agent and
 * qemu-storage-daemon processes; data compared byte for byte.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { getSqliteEventStore, relationshipStream } from "../../src/ledger/index.js";
import { compareImages, convertImage, runTool } from "../../src/qemu/processes/index.js";
import { makeTmpDir } from "../helpers/tmpDir.js";
import { ledgerEvents, pointContentHashes } from "../helpers/resyncChecks.js";
import { runCli, waitFor, type Daemon } from "../helpers/processes.js";
import { setupTwoSites, type TwoSites } from "../helpers/twoSites.js";
import { startGuestAgent } from "../helpers/crashGuest.js";

const MiB = 1024 * 1024;
let env: TwoSites | undefined;
let cleanup: (() => void) | undefined;
afterEach(async () => {
  await env?.stopAll();
  if (!process.env.QR_KEEP) cleanup?.();
  env = undefined;
});

function tail(path: string, lines = 30): string {
  try {
    return readFileSync(path, "utf8")
      .split("\n")
      .filter((l) => !l.includes('"level":20'))
      .slice(-lines)
      .join("\n");
  } catch {
    return "(no log)";
  }
}

const diskDir = (t: TwoSites) => join(t.siteB, "storage", "vm1", "vda");

interface Running {
  t: TwoSites;
  site: Daemon;
  agent: Daemon;
}

async function replicating(opts: { maxPoints?: number } = {}): Promise<Running> {
  const tmp = makeTmpDir("qr-crashwin-");
  cleanup = tmp.cleanup;
  env = await setupTwoSites(tmp.path, { diskBytes: 32 * MiB, intervalSeconds: 1, maxPoints: opts.maxPoints });
  const t = env;
  const site = await t.startSite(t.siteB);
  await t.vm.guestWrite("vda", ["write -P 0x01 0 2M"]);
  const agent = t.startAgent();
  await waitFor("initial replication and one incremental point", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 120_000);
  return { t, site, agent };
}

/** The primary disk now, as a raw file: what the next point must equal. */
async function primarySnapshot(t: TwoSites, name: string): Promise<string> {
  const file = join(t.dir, `${name}.raw`);
  await convertImage(t.vm.guestUri("vda"), file, { srcFormat: "raw", dstFormat: "raw" });
  return file;
}

async function expectIdentical(image: string, raw: string, what: string): Promise<void> {
  const cmp = await compareImages(image, raw, { formatA: "qcow2", formatB: "raw" });
  expect(cmp.detail, what).toMatch(/identical/i);
}

/** Resolves once a site started with `fault` armed has killed itself there. */
async function killedAt(t: TwoSites, site: Daemon, fault: string): Promise<void> {
  await Promise.race([
    site.exited,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`the site never reached ${fault}\n${tail(join(t.siteB, "site.log"))}`)), 120_000)),
  ]);
  expect(site.child.signalCode).toBe("SIGKILL");
}

/** Stops the site gently and starts it with a fault armed; resolves once it has killed itself. */
async function crashSiteAt(r: Running, fault: string, beforeStart: () => Promise<void>): Promise<void> {
  await r.site.kill("SIGTERM");
  await beforeStart();
  r.site = await r.t.startSite(r.t.siteB, { env: { QREPLICA_FAULT: fault } });
  await killedAt(r.t, r.site, fault);
}

async function cycleEvents(t: TwoSites): Promise<Array<{ type: string; seq: number }>> {
  const store = getSqliteEventStore({ path: join(t.siteB, "ledger.sqlite"), create: false });
  try {
    return (await store.readStream(relationshipStream("vm1")))
      .filter((e) => e.type === "CycleCommitted" || e.type === "CycleFailed" || e.type === "RecoveryPointCreated")
      .map((e) => ({ type: e.type, seq: Number((e.data as { cycleSeq: number }).cycleSeq) }));
  } finally {
    await store.close();
  }
}

/**
 * What `qreplica points` lists is the ledger's points, each with its image, and no other image is
 * on disk. Cycles go on meanwhile (no retention here, points only grow): the listing must lie
 * between a ledger read before it and one after it.
 */
async function expectPointsMatchLedger(t: TwoSites): Promise<void> {
  const before = await t.relationship();
  const r = await runCli(["points", "vm1", "--dir", t.siteB, "--json"]);
  const files = readdirSync(diskDir(t)).filter((f) => !f.endsWith(".partial"));
  const onDisk = files.filter((f) => f.endsWith(".qcow2")).map((f) => join(diskDir(t), f));
  const after = await t.relationship();
  expect(r.code, r.stderr).toBe(0);
  const listed = (JSON.parse(r.stdout) as Array<{ recoveryPointId: string }>).map((p) => p.recoveryPointId);
  const ids = (s: typeof before) => s.points.map((p) => p.pointId);
  expect(listed.slice(0, before.points.length)).toEqual(ids(before));
  expect(ids(after).slice(0, listed.length)).toEqual(listed);
  for (const p of after.points) for (const d of p.disks) expect(existsSync(d.imagePath), d.imagePath).toBe(true);
  const images = (s: typeof before) => s.points.flatMap((p) => p.disks.map((d) => d.imagePath));
  for (const f of images(before)) expect(onDisk).toContain(f);
  for (const f of onDisk) expect(images(after), `${f} is on disk but no point of the ledger names it`).toContain(f);
  // Chunk hash indexes: at most one, a point's the ledger knows (the newest, unless a cycle committed since).
  const indexes = files.filter((f) => f.endsWith(".chunks"));
  expect(indexes.length, indexes.join(", ")).toBeLessThanOrEqual(1);
  for (const f of indexes) expect(after.points.map((p) => `rp-${String(p.cycleSeq).padStart(8, "0")}.chunks`)).toContain(f);
}

async function waitForPointAfter(t: TwoSites, at: number) {
  return waitFor("a point cut after the write", async () => (await t.relationship()).points.find((p) => Date.parse(p.cutoffAt) > at), 120_000).catch((err: Error) => {
    throw new Error(`${err.message}\n--- agent.log ---\n${tail(join(t.dir, "agent.log"))}\n--- site.log ---\n${tail(join(t.siteB, "site.log"))}`);
  });
}

describe("crash windows of the replica site (QREPLICA_FAULT, SIGKILL)", { timeout: 600_000 }, () => {
  it("(a) killed between CycleCommitted and the ack: the agent learns the cycle was committed; no duplicate point, nothing lost", async () => {
    const r = await replicating();
    const { t } = r;
    let expected = "";
    let wroteAt = 0;
    await crashSiteAt(r, "crash-after-commit-before-ack", async () => {
      await t.vm.guestWrite("vda", ["write -P 0x5a 4M 3M"]);
      wroteAt = Date.now();
      expected = await primarySnapshot(t, "after-5a");
    });
    const committed = await t.relationship();
    const unacked = committed.points.at(-1)!;
    expect(Date.parse(unacked.cutoffAt)).toBeGreaterThan(wroteAt); // the cycle that carried 0x5a is in the ledger
    await expectIdentical(unacked.disks[0]!.imagePath, expected, `point ${unacked.pointId} (committed, never acked)`);

    r.site = await t.startSite(t.siteB);
    await waitFor(
      "the agent to hear that the unacknowledged cycle was committed",
      () => (readFileSync(join(t.dir, "agent.log"), "utf8").includes("committed by the replica site before its ack was lost") ? true : undefined),
      60_000,
    );
    await t.vm.guestWrite("vda", ["write -P 0x6b 9M 1M"]);
    const at = Date.now();
    const latestExpected = await primarySnapshot(t, "after-6b");
    const next = await waitForPointAfter(t, at);
    await expectIdentical(next.disks[0]!.imagePath, latestExpected, `point ${next.pointId}`);

    const state = await t.relationship();
    expect(state.points.find((p) => p.pointId === unacked.pointId)).toBeDefined();
    await expectIdentical(unacked.disks[0]!.imagePath, expected, `point ${unacked.pointId} after the restart`);
    const events = await cycleEvents(t);
    const commits = events.filter((e) => e.type === "CycleCommitted").map((e) => e.seq);
    expect(new Set(commits).size).toBe(commits.length);
    // The agent did not re-send the committed cycle under its old number (the site would refuse it).
    expect(events.filter((e) => e.type === "CycleFailed" && e.seq === unacked.cycleSeq)).toEqual([]);
    await expectPointsMatchLedger(t);
  });

  it.each(["automatic", "manual"] as const)(
    "(d) killed between the INITIAL cycle's CycleCommitted and its ack (resync: %s): the agent resyncs against that point by itself; no second full cycle, no loop of refusals",
    async (mode) => {
      const tmp = makeTmpDir("qr-crashwin-");
      cleanup = tmp.cleanup;
      env = await setupTwoSites(tmp.path, { diskBytes: 32 * MiB, intervalSeconds: 1 });
      const t = env;
      await t.vm.guestWrite("vda", ["write -P 0x01 0 2M", "write -P 0x2d 20M 1M"]);
      const initialExpected = await primarySnapshot(t, "initial");
      // Armed from the site's first start: its first commit is the agent's initial (full) cycle.
      const crashing = await t.startSite(t.siteB, { env: { QREPLICA_FAULT: "crash-after-commit-before-ack" } });
      // With `resync: manual` too: an interrupted initial replication is not a protected VM's resync, nobody has to approve it.
      const agentLog = join(t.dir, mode === "manual" ? "crash-agent.log" : "agent.log");
      if (mode === "manual")
        startGuestAgent(
          t,
          { qmpSocketPath: t.vm.qmpSocketPath, nbdSocketPath: t.vm.nbdSocketPath, disks: [{ id: "vda", node: "node-vda" }] },
          { intervalSeconds: 1, resync: "manual" },
        );
      else t.startAgent();
      await killedAt(t, crashing, "crash-after-commit-before-ack");

      const crashed = await t.relationship();
      expect(crashed.state).toBe("replicating");
      expect(crashed.points.length).toBe(1);
      const initial = crashed.points[0]!;
      // No partial image (a chunk hash index on its way in may be left: the restart removes it).
      expect(readdirSync(diskDir(t)).filter((f) => f.endsWith(".qcow2.partial"))).toEqual([]);
      await expectIdentical(initial.disks[0]!.imagePath, initialExpected, `the initial point ${initial.pointId} (committed, never acked)`);
      const initialHashes = await pointContentHashes([initial], t.dir);
      const eventsAtRestart = (await ledgerEvents(t.siteB)).length;

      await t.startSite(t.siteB);
      const diag = () => `\n--- agent.log ---\n${tail(agentLog)}\n--- site.log ---\n${tail(join(t.siteB, "site.log"))}`;
      // The agent's enable was aborted (no ack): it reports no change tracking, and the site, which
      // has the initial point, has it resync by comparison against that point: nothing to send.
      const resync = await waitFor(
        "the agent's resync against the committed initial point",
        async () => (await ledgerEvents(t.siteB)).slice(eventsAtRestart).find((e) => e.type === "CycleCommitted" && (e.data as { kind: string }).kind === "resync"),
        120_000,
      ).catch((err: Error) => {
        throw new Error(err.message + diag());
      });
      expect(readFileSync(agentLog, "utf8")).toContain(`cycle ${initial.cycleSeq} was committed by the replica site before its ack was lost; change tracking was not confirmed`);
      const resyncData = resync.data as { cycleSeq: number; dataBytes: number; zeroBytes: number; comparedBytes?: number };
      expect(resyncData.comparedBytes).toBe(32 * MiB);
      expect(resyncData.dataBytes + resyncData.zeroBytes).toBe(0);

      await t.vm.guestWrite("vda", ["write -P 0x6b 9M 1M"]);
      const at = Date.now();
      const latestExpected = await primarySnapshot(t, "after-6b");
      const next = await waitForPointAfter(t, at);
      await expectIdentical(next.disks[0]!.imagePath, latestExpected, `point ${next.pointId}`);
      // A few more cycles: the ledger must grow by points only, not by refusals.
      await waitFor(
        "three more incremental points",
        async () => ((await t.relationship()).points.filter((p) => p.cycleSeq > next.cycleSeq).length >= 3 ? true : undefined),
        120_000,
      );

      const state = await t.relationship();
      expect(state.state).toBe("replicating");
      expect(state.points[0]!.pointId).toBe(initial.pointId);
      expect(await pointContentHashes([state.points[0]!], t.dir)).toEqual(initialHashes);
      const events = await ledgerEvents(t.siteB);
      const after = events.slice(eventsAtRestart);
      const commits = events.filter((e) => e.type === "CycleCommitted").map((e) => e.data as { cycleSeq: number; kind: string });
      expect(new Set(commits.map((c) => c.cycleSeq)).size).toBe(commits.length);
      expect(commits.filter((c) => c.kind === "full").map((c) => c.cycleSeq)).toEqual([initial.cycleSeq]);
      expect(new Set(state.points.map((p) => p.cycleSeq)).size).toBe(state.points.length);
      const failed = after.filter((e) => e.type === "CycleFailed").map((e) => e.data as { reason: string; message: string });
      expect(failed.length, JSON.stringify(failed)).toBeLessThanOrEqual(1);
      const required = after.filter((e) => e.type === "ResyncRequired").map((e) => (e.data as { reason: string }).reason);
      expect(required).toEqual([
        `vda: ENABLE_UNACKNOWLEDGED (cycle ${initial.cycleSeq}, which enables change tracking, was never acknowledged by the replica site (the site, the link or the agent stopped first))`,
      ]);
      expect(readFileSync(agentLog, "utf8")).not.toMatch(/needs ready-for-initial-replication|waiting for an operator/);
      // Nobody approved it, and the resync names no operator.
      expect(after.filter((e) => e.type === "ResyncApproved")).toEqual([]);
      expect(after.find((e) => e.type === "ResyncStarted")?.metadata).toEqual({});
      await expectPointsMatchLedger(t);
    },
  );

  it("(c) killed between a point's rename and its CycleCommitted: no point the ledger lacks; the agent re-sends the cycle", async () => {
    const r = await replicating();
    const { t } = r;
    const before = await t.relationship();
    let expected = "";
    await crashSiteAt(r, "crash-after-rename-before-ledger", async () => {
      await t.vm.guestWrite("vda", ["write -P 0x3c 6M 2M"]);
      expected = await primarySnapshot(t, "after-3c");
    });
    const crashed = await t.relationship();
    // The renamed overlay is on disk, but not a point: the ledger never recorded it.
    const known = new Set(crashed.points.flatMap((p) => p.disks.map((d) => d.imagePath)));
    const strays = readdirSync(diskDir(t))
      .filter((f) => f.endsWith(".qcow2"))
      .map((f) => join(diskDir(t), f))
      .filter((f) => !known.has(f));
    expect(strays.length).toBe(1);
    // Its chunk index, written in the background once the image is in place, may or may not be
    // there: either way both go at the restart (expectPointsMatchLedger checks the indexes too).
    expect(strays[0]).toMatch(/rp-\d+\.qcow2$/);
    expect(crashed.points.slice(0, before.points.length).map((p) => p.pointId)).toEqual(before.points.map((p) => p.pointId));
    expect(crashed.lastCycleSeq).toBeLessThan(Number(/rp-(\d+)\.qcow2$/.exec(strays[0]!)![1]));

    const restartedAt = Date.now();
    r.site = await t.startSite(t.siteB);
    expect(existsSync(strays[0]!)).toBe(false); // removed before the site listened
    await expectPointsMatchLedger(t);
    // The agent was never acked: the changes come again in its next cycle, nothing lost.
    const next = await waitFor(
      "a point committed after the restart",
      async () => (await t.relationship()).points.find((p) => p.cycleSeq > crashed.lastCycleSeq && Date.parse(p.cutoffAt) > restartedAt - 120_000),
      120_000,
    );
    await expectIdentical(next.disks[0]!.imagePath, expected, `point ${next.pointId}`);
    await expectPointsMatchLedger(t);
  });

  it("(b) killed during a retention merge (qemu-img commit running, after it, before the ledger): chains stay valid, every point byte-identical", async () => {
    const r = await replicating({ maxPoints: 3 });
    const { t } = r;
    const faults = ["crash-mid-merge", "crash-after-merge-commit", "crash-before-merge-recorded"];
    for (const [i, fault] of faults.entries()) {
      await waitFor(
        "retention at its bound",
        async () => {
          const s = await t.relationship();
          return s.points.length === 3 && s.points.every((p) => !p.merging) ? true : undefined;
        },
        120_000,
      );
      let copies: Array<{ pointId: string; raw: string }> = [];
      let expected = "";
      await crashSiteAt(r, fault, async () => {
        // The site is down: the points are still; keep a copy of what each one is.
        const s = await t.relationship();
        copies = [];
        for (const p of s.points) {
          const raw = join(t.dir, `${fault}-${p.pointId}.raw`);
          await convertImage(p.disks[0]!.imagePath, raw, { srcFormat: "qcow2", dstFormat: "raw" });
          copies.push({ pointId: p.pointId, raw });
        }
        await t.vm.guestWrite("vda", [`write -P ${0x40 + i} ${8 + i}M 1M`]);
        expected = await primarySnapshot(t, `after-${fault}`);
      });
      // Let the restart alone finish the merge: no new cycles while the chain is checked.
      await r.agent.kill("SIGTERM");
      const crashed = await t.relationship();
      expect(
        crashed.points.some((p) => p.merging),
        `${fault}: the ledger shows the merge under way`,
      ).toBe(true);
      r.site = await t.startSite(t.siteB);
      const state = await t.relationship();
      expect(state.points.some((p) => p.merging)).toBe(false);
      // The restart finishes the one merge under way: one point fewer than the ledger held at the
      // crash. (With 1 s cycles a slow site can commit a second cycle while qemu-img commit runs,
      // so the crash may find 5 points, not 4: seen once in CI.)
      expect(crashed.points.filter((p) => p.merging).length, `${fault}: one merge under way at the crash`).toBe(1);
      expect(state.points.length).toBe(crashed.points.length - 1);
      for (const p of state.points) {
        // Exit 3 is leaked clusters only (harmless after a crash); corruptions or check errors are not.
        const check = await runTool("qemu-img", ["check", "-U", "--output=json", p.disks[0]!.imagePath], { allowExit: [0, 3] });
        const report = JSON.parse(check.stdout) as { corruptions?: number; "check-errors": number };
        expect({ corruptions: report.corruptions ?? 0, errors: report["check-errors"] }, `${fault}: qemu-img check ${p.pointId}`).toEqual({ corruptions: 0, errors: 0 });
        const copy = copies.find((c) => c.pointId === p.pointId);
        if (copy) await expectIdentical(p.disks[0]!.imagePath, copy.raw, `${fault}: point ${p.pointId}`);
        else await expectIdentical(p.disks[0]!.imagePath, expected, `${fault}: the new point ${p.pointId}`);
      }
      // Each point committed by the armed site holds the write made while it was down (checked above).
      expect(state.points.filter((p) => !copies.some((c) => c.pointId === p.pointId)).length).toBeGreaterThanOrEqual(1);
      await expectPointsMatchLedger(t);
      r.agent = t.startAgent();
    }
  });
});
