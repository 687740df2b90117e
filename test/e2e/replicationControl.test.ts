/**
 * Operator control of a VM's replication through the CLI, against real processes: `resync:
 * manual` waits for `qreplica resync`, whose go-ahead is in the ledger (it survives a site
 * restart while the agent is away), `qreplica pause` / `resume` lose no change, and an agent
 * that lost its state directory is recognised as the current primary (its VM is not fenced).
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { compareImages } from "../../src/qemu/processes/index.js";
import { makeTmpDir } from "../helpers/tmpDir.js";
import { runCli, waitFor, type Daemon } from "../helpers/processes.js";
import { setupTwoSites, type TwoSites } from "../helpers/twoSites.js";
import { CrashGuest, guestDisks, logTail, startGuestAgent, type AgentVm } from "../helpers/crashGuest.js";
import { ledgerEvents } from "../helpers/resyncChecks.js";
import { readFileSync } from "node:fs";

const MiB = 1024 * 1024;
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

async function cliJson<T>(args: string[]): Promise<T> {
  const r = await runCli([...args, "--json"]);
  if (r.code !== 0) throw new Error(`qreplica ${args.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as T;
}

const storageVm = (t: TwoSites): AgentVm => ({ qmpSocketPath: t.vm.qmpSocketPath, nbdSocketPath: t.vm.nbdSocketPath, disks: [{ id: "vda", node: "node-vda" }] });

async function replicating(opts: { resync?: "manual" }): Promise<{ t: TwoSites; diag: () => string; site: Daemon; agent: Daemon }> {
  const tmp = makeTmpDir("qr-control-");
  cleanup = tmp.cleanup;
  env = await setupTwoSites(tmp.path, { diskBytes: 64 * MiB, intervalSeconds: 1 });
  const t = env;
  const site = await t.startSite(t.siteB);
  await t.vm.guestWrite("vda", ["write -P 0x11 0 4M"]);
  const agent = startGuestAgent(t, storageVm(t), { intervalSeconds: 1, resync: opts.resync });
  const diag = () => `\n--- agent ---\n${logTail(join(t.dir, "crash-agent.log"))}\n--- site-b ---\n${logTail(join(t.siteB, "site.log"))}`;
  await waitFor("two points", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 90_000).catch((e: Error) => {
    throw new Error(e.message + diag());
  });
  return { t, diag, site, agent };
}

/** kill -9 of the primary's QEMU (a storage daemon here) and a restart: its bitmaps are gone. */
async function crashPrimary(t: TwoSites, diag: () => string): Promise<void> {
  await t.vm.guestWrite("vda", ["write -P 0x22 10M 1M"]);
  await t.vm.proc.kill("SIGKILL");
  rmSync(t.vm.qmpSocketPath, { force: true });
  rmSync(t.vm.nbdSocketPath, { force: true });
  await t.vm.restart();
  await waitFor("resync-required", async () => ((await t.relationship()).state === "resync-required" ? true : undefined), 120_000).catch((e: Error) => {
    throw new Error(e.message + diag());
  });
}

async function expectPointAfterEqualsPrimary(t: TwoSites, after: number, diag: () => string): Promise<void> {
  const point = await waitFor("a point cut after the writes", async () => (await t.relationship()).points.find((p) => Date.parse(p.cutoffAt) > after), 120_000).catch(
    (e: Error) => {
      throw new Error(e.message + diag());
    },
  );
  const cmp = await compareImages(point.disks[0]!.imagePath, t.vm.guestUri("vda"), { formatA: "qcow2", formatB: "raw" });
  expect(cmp.detail).toMatch(/identical/i);
}

const agentLogHas = (t: TwoSites, text: string) => () => (readFileSync(join(t.dir, "crash-agent.log"), "utf8").includes(text) ? true : undefined);

describe("operator control of replication (CLI, real processes)", { timeout: 300_000 }, () => {
  it("resync: manual waits for `qreplica resync`, which the connected agent runs at once", async () => {
    const { t, diag } = await replicating({ resync: "manual" });
    await crashPrimary(t, diag);
    await waitFor("the agent waiting for an operator", agentLogHas(t, "waiting for an operator"), 60_000);
    const status = await cliJson<{ relationships: Array<{ state: string; health: string; healthMessage: string }> }>(["status", "vm1", "--dir", t.siteB]);
    expect(status.relationships[0]!).toMatchObject({ health: "critical", state: "resync-required" });
    expect(status.relationships[0]!.healthMessage).toMatch(/^resync required: vda: BITMAP_MISSING/);
    const { events } = await cliJson<{ events: Array<{ type: string; data: { reason?: string } }> }>(["events", "vm1", "--dir", t.siteB, "--limit", "1000"]);
    expect(events.find((e) => e.type === "ResyncRequired")?.data.reason).toMatch(/^vda: BITMAP_MISSING/);
    // Manual: nothing started on its own.
    expect((await ledgerEvents(t.siteB)).some((e) => e.type === "ResyncStarted")).toBe(false);

    const r = await cliJson<{ state: string; agentNotified: boolean }>(["resync", "vm1", "--dir", t.siteB]);
    expect(r).toEqual({ state: "resync-required", agentNotified: true });
    await waitFor("the resync committed", async () => ((await ledgerEvents(t.siteB)).some((e) => e.type === "ResyncCompleted") ? true : undefined), 120_000).catch((e: Error) => {
      throw new Error(e.message + diag());
    });
    // The operator's go-ahead is on record, and ResyncStarted names who gave it.
    const recorded = await ledgerEvents(t.siteB);
    const approved = recorded.findIndex((e) => e.type === "ResyncApproved");
    const started = recorded.findIndex((e) => e.type === "ResyncStarted");
    expect(approved).toBeGreaterThan(-1);
    expect(started).toBeGreaterThan(approved);
    expect(recorded[approved]!.metadata).toMatchObject({ actor: "site-b-admin", actorRole: "admin" });
    expect(recorded[started]!.metadata).toMatchObject({ actor: "site-b-admin", actorRole: "admin" });
    const state = await t.relationship();
    expect(state.state).toBe("replicating");
    const cmp = await compareImages(state.points.at(-1)!.disks[0]!.imagePath, t.vm.guestUri("vda"), { formatA: "qcow2", formatB: "raw" });
    expect(cmp.detail).toMatch(/identical/i);
  });

  it("resync: manual, a go-ahead given while the agent is away survives a site restart: the agent resyncs without a second command", async () => {
    const r0 = await replicating({ resync: "manual" });
    const { t, diag, agent } = r0;
    let site = r0.site;
    const restartSite = async () => {
      await site.kill("SIGKILL");
      site = await t.startSite(t.siteB);
    };
    await crashPrimary(t, diag);
    await waitFor("the agent waiting for an operator", agentLogHas(t, "waiting for an operator"), 60_000);
    await agent.kill("SIGKILL");
    // A fresh site process has no session for the VM: the agent is certainly not connected.
    await restartSite();

    const r = await cliJson<{ state: string; agentNotified: boolean }>(["resync", "vm1", "--dir", t.siteB]);
    expect(r).toEqual({ state: "resync-required", agentNotified: false });
    const status = await cliJson<{ relationships: Array<{ healthMessage: string }> }>(["status", "vm1", "--dir", t.siteB]);
    expect(status.relationships[0]!.healthMessage).toMatch(/^resync required: vda: BITMAP_MISSING.*\(approved by site-b-admin; waiting for the primary's agent\)$/);
    // A second go-ahead is refused and names the first.
    const again = await runCli(["resync", "vm1", "--dir", t.siteB]);
    expect(again.code).not.toBe(0);
    expect(again.stderr + again.stdout).toMatch(/already approved by site-b-admin/);

    // The site restarts before the agent comes back: nothing of the go-ahead was in its memory.
    await restartSite();
    expect((await ledgerEvents(t.siteB)).some((e) => e.type === "ResyncStarted")).toBe(false);
    startGuestAgent(t, storageVm(t), { intervalSeconds: 1, resync: "manual" });
    await waitFor("the resync committed", async () => ((await ledgerEvents(t.siteB)).some((e) => e.type === "ResyncCompleted") ? true : undefined), 120_000).catch((e: Error) => {
      throw new Error(e.message + diag());
    });

    const events = await ledgerEvents(t.siteB);
    const types = events.map((e) => e.type);
    const approved = types.indexOf("ResyncApproved");
    const started = types.indexOf("ResyncStarted");
    const completed = types.indexOf("ResyncCompleted");
    expect(types.filter((x) => x === "ResyncApproved")).toHaveLength(1);
    expect(approved).toBeGreaterThan(types.indexOf("ResyncRequired"));
    expect(started).toBeGreaterThan(approved);
    expect(completed).toBeGreaterThan(started);
    expect(events[approved]!.metadata).toMatchObject({ actor: "site-b-admin", actorRole: "admin" });
    expect(events[approved]!.data).toEqual({ approvedBy: "site-b-admin", approvedByRole: "admin" });
    expect(events[started]!.metadata).toMatchObject({ actor: "site-b-admin", actorRole: "admin" });
    const point = events.slice(started).find((e) => e.type === "RecoveryPointCreated")!.data as { pointId: string };
    const state = await t.relationship();
    expect(state).toMatchObject({ state: "replicating", resyncApproval: undefined });
    const resyncPoint = state.points.find((p) => p.pointId === point.pointId)!;
    const cmp = await compareImages(resyncPoint.disks[0]!.imagePath, t.vm.guestUri("vda"), { formatA: "qcow2", formatB: "raw" });
    expect(cmp.detail).toMatch(/identical/i);
    // `qreplica events` shows the approval with its operator.
    const listed = await cliJson<{ events: Array<{ type: string; actor: string }> }>(["events", "vm1", "--dir", t.siteB, "--all"]);
    expect(listed.events.find((e) => e.type === "ResyncApproved")?.actor).toBe("site-b-admin");
  });

  it("pause and resume through the CLI: no cycle while paused, no change lost", async () => {
    const { t, diag } = await replicating({});
    const paused = await cliJson<{ state: string; agentNotified: boolean }>(["pause", "vm1", "--dir", t.siteB, "--reason", "WAN maintenance"]);
    expect(paused).toEqual({ state: "paused", agentNotified: true });
    await waitFor("the agent pausing", agentLogHas(t, "replication paused by an operator"), 30_000);
    const pausedAt = Date.now();
    await t.vm.guestWrite("vda", ["write -P 0x33 20M 2M", "write -z 1M 64k"]);
    const status = await cliJson<{ relationships: Array<{ health: string; healthMessage: string }> }>(["status", "vm1", "--dir", t.siteB]);
    expect(status.relationships[0]!.healthMessage).toBe("replication is paused: WAN maintenance");
    // Several of the agent's 1 s intervals pass: a paused agent sends nothing the site would refuse.
    await waitFor("three cycle intervals", () => (Date.now() > pausedAt + 3_000 ? true : undefined), 10_000);
    const resumed = await cliJson<{ state: string; agentNotified: boolean }>(["resume", "vm1", "--dir", t.siteB]);
    expect(resumed).toEqual({ state: "replicating", agentNotified: true });
    await expectPointAfterEqualsPrimary(t, pausedAt, diag);

    const events = await ledgerEvents(t.siteB);
    const from = events.findIndex((e) => e.type === "ReplicationPaused");
    const to = events.findIndex((e) => e.type === "ReplicationResumed");
    // Nothing committed while paused. A cycle the agent had begun when the pause came is refused
    // (its changes stay in the bitmap): at most that one, for the paused state, and nothing else.
    const during = events.slice(from, to);
    expect(during.filter((e) => e.type === "CycleCommitted")).toEqual([]);
    const refused = during.filter((e) => e.type === "CycleFailed");
    expect(refused.length).toBeLessThanOrEqual(1);
    for (const e of refused) expect(e.data).toMatchObject({ reason: "REJECT_REASON_INVALID_STATE", message: expect.stringContaining("is in state paused") });
    // `--dir` uses the site's local admin certificate: the ledger names it.
    expect(events[from]!.metadata).toMatchObject({ actor: "site-b-admin", actorRole: "admin" });
    expect(events[to]!.metadata).toMatchObject({ actor: "site-b-admin", actorRole: "admin" });
    expect((events[from]!.data as { reason: string }).reason).toBe("WAN maintenance");
  });

  it("an agent that lost its state directory is recognised as the current primary: no fencing, a resync", async () => {
    const tmp = makeTmpDir("qr-lost-state-");
    cleanup = tmp.cleanup;
    env = await setupTwoSites(tmp.path, { diskBytes: 16 * MiB, intervalSeconds: 1 });
    const t = env;
    guest = await CrashGuest.create(join(t.dir, "guest"));
    const g = guest;
    await t.startSite(t.siteB);
    const stateDir = join(t.dir, "agent-state-lost");
    const agent = startGuestAgent(t, guestDisks(g), { intervalSeconds: 1, stateDir });
    const diag = () => `\n--- agent ---\n${logTail(join(t.dir, "crash-agent.log"))}\n--- site-b ---\n${logTail(join(t.siteB, "site.log"))}`;
    await waitFor("two points", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 120_000).catch((e: Error) => {
      throw new Error(e.message + diag());
    });
    await agent.kill("SIGTERM");
    const eventsBefore = (await ledgerEvents(t.siteB)).length;
    rmSync(stateDir, { recursive: true, force: true });
    startGuestAgent(t, guestDisks(g), { intervalSeconds: 1, stateDir });

    await waitFor(
      "a resync after the lost state",
      async () => ((await ledgerEvents(t.siteB)).slice(eventsBefore).some((e) => e.type === "ResyncCompleted") ? true : undefined),
      120_000,
    ).catch((e: Error) => {
      throw new Error(e.message + diag());
    });
    const events = (await ledgerEvents(t.siteB)).slice(eventsBefore);
    expect(events.some((e) => e.type === "StaleGenerationRefused")).toBe(false);
    expect(events.find((e) => e.type === "GenerationAcknowledged")?.data).toMatchObject({ presentedGeneration: 0, generation: 1 });
    expect((events.find((e) => e.type === "ResyncRequired")?.data as { reason: string }).reason).toMatch(/^vda: NOT_ENABLED/);
    // The healthy VM was not fenced: its vCPUs still run.
    expect(await g.execute("query-status")).toMatchObject({ status: "running" });

    // Replication goes on: with the guest paused, the next point equals its disk.
    await g.execute("stop");
    const stoppedAt = Date.now();
    const point = await waitFor("a point after the guest stopped", async () => (await t.relationship()).points.find((p) => Date.parse(p.cutoffAt) > stoppedAt), 60_000);
    const cmp = await compareImages(point.disks[0]!.imagePath, g.diskPath, { formatA: "qcow2", formatB: "qcow2" });
    expect(cmp.detail).toMatch(/identical/i);
  });
});
