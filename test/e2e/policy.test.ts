/**
 * Policies against real processes (a site over mutual TLS, a real agent, a qemu-storage-daemon
 * VM): a running agent picks up a changed frequency and compression level at its next cycle
 * without a restart; an invalid policy is refused with the field named; bindings survive a site
 * restart and a site binding wins over the agent config's.
 */
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { getSqliteEventStore, relationshipStream, type RecordedEvent } from "../../src/ledger/index.js";
import { bindingStream } from "../../src/policy/policyLedger.js";
import { compareImages, convertImage } from "../../src/qemu/processes/index.js";
import { cliJson, runCli, waitFor } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const setup = twoSitesPerTest();

interface LogLine {
  msg: string;
  seq?: number;
  policy?: string;
  compressionLevel?: number;
  frequency?: string;
  via?: string;
}

const agentLog = (t: TwoSites): LogLine[] =>
  readFileSync(join(t.dir, "agent.log"), "utf8")
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as LogLine);
const acked = (t: TwoSites) => agentLog(t).filter((l) => l.msg === "cycle acknowledged by the replica site");

async function bindingEvents(t: TwoSites, vmId: string): Promise<RecordedEvent[]> {
  const store = getSqliteEventStore({ path: join(t.siteB, "ledger.sqlite"), create: false });
  try {
    return await store.readStream(bindingStream(vmId));
  } finally {
    await store.close();
  }
}

async function relationshipEvents(t: TwoSites): Promise<RecordedEvent[]> {
  const store = getSqliteEventStore({ path: join(t.siteB, "ledger.sqlite"), create: false });
  try {
    return await store.readStream(relationshipStream("vm1"));
  } finally {
    await store.close();
  }
}

describe("replication policies on a running agent", () => {
  it("a bound policy's retention is what the site keeps, and a new version's retention applies from the next cycle", async () => {
    // The site's own default would keep 100 points (setupTwoSites' --max-points).
    const t = await setup("qr-policy-ret-", { diskBytes: 16 * MiB, intervalSeconds: 3600 });
    const site = () => ["--dir", t.siteB];
    await t.startSite(t.siteB);
    const file = join(t.dir, "keep.yaml");
    writeFileSync(file, "name: keep\nfrequency: 1s\nretention: { minPoints: 3 }\n");
    await cliJson(["policy", "apply", file, ...site()]);
    await t.vm.guestWrite("vda", ["write -P 0x11 0 1M"]);
    t.startAgent({ policy: "keep" });
    const points = async () => (await t.relationship()).points;
    const lastSeq = async () => (await t.relationship()).lastCycleSeq;
    // Several cycles past the third: the oldest are merged away, three stay.
    await waitFor("eight cycles", async () => ((await lastSeq()) >= 8 ? true : undefined), 90_000);
    await waitFor("three points kept", async () => ((await points()).length === 3 ? true : undefined), 30_000);
    expect((await points()).map((p) => p.cycleSeq)).toEqual(expect.arrayContaining([await lastSeq()]));

    writeFileSync(file, "name: keep\nfrequency: 1s\nretention: { minPoints: 6 }\n");
    expect(await cliJson(["policy", "apply", file, ...site()])).toMatchObject({ version: 2, changed: true });
    const from = await lastSeq();
    await waitFor("six points kept under keep@2", async () => ((await points()).length === 6 && (await lastSeq()) >= from + 3 ? true : undefined), 60_000);
    // Never more than the policy promises once it has caught up.
    await waitFor("three more cycles", async () => ((await lastSeq()) >= from + 6 ? true : undefined), 60_000);
    expect((await points()).length).toBeLessThanOrEqual(7);
  }, 300_000);

  it("a frequency (3600 s -> 1 s) and compression (1 -> 9) change takes effect at the next cycle, without a restart", async () => {
    // The agent config's own interval is an hour too: only the policy can make cycles come faster.
    const t = await setup("qr-policy-", { diskBytes: 32 * MiB, intervalSeconds: 3600 });
    const site = () => ["--dir", t.siteB];
    await t.startSite(t.siteB);
    const file = join(t.dir, "acc.yaml");
    writeFileSync(file, "name: acc\nfrequency: 1h\ncompressionLevel: 1\nretention: { minPoints: 50 }\n");
    expect(await cliJson(["policy", "apply", file, ...site()])).toMatchObject({ name: "acc", version: 1, changed: true });

    await t.vm.guestWrite("vda", ["write -P 0x11 0 4M"]);
    const agent = t.startAgent({ policy: "acc" });
    const diag = () =>
      `\n--- agent ---\n${readFileSync(join(t.dir, "agent.log"), "utf8").slice(-4000)}\n--- site ---\n${readFileSync(join(t.siteB, "site.log"), "utf8").slice(-4000)}`;
    await waitFor("the initial replication under acc@1", () => (acked(t).some((l) => l.policy === "acc@1") ? true : undefined), 90_000).catch((e: Error) => {
      throw new Error(e.message + diag());
    });
    // Bound at the first Hello by the agent config's `policy:`, recorded as the agent's doing.
    expect((await bindingEvents(t, "vm1")).map((e) => [e.data.policyName, e.data.source, e.metadata.actor])).toEqual([["acc", "agent-config", "agent-a"]]);
    const before = (await t.relationship()).lastCycleSeq;
    expect(before).toBe(1);

    const invalid = join(t.dir, "invalid.yaml");
    writeFileSync(invalid, "name: acc\nfrequency: 1s\nretention:\n  tiers:\n    - { every: all, keepFor: 2h }\n    - { every: 1hr, keepFor: 48h }\n");
    const refused = await runCli(["policy", "apply", invalid, ...site(), "--json"]);
    expect(refused.code).toBe(2);
    const error = (JSON.parse(refused.stdout) as { error: { code: string; message: string } }).error;
    expect(error.code).toBe("INVALID_ARGUMENT");
    expect(error.message).toContain('retention.tiers[1].every: "1hr" is not a duration; write e.g. 30s, 5m, 1h, 1d, 1w');
    expect((await cliJson<{ version: number }>(["policy", "show", "acc", ...site()])).version).toBe(1);

    // Nothing else is due for an hour: every cycle from here on is the change's doing.
    writeFileSync(file, "name: acc\nfrequency: 1s\ncompressionLevel: 9\nretention: { minPoints: 50 }\n");
    const dry = await cliJson<{ version: number; changed: boolean; dryRun: boolean; diff: unknown[] }>(["policy", "apply", file, "--dry-run", ...site()]);
    expect(dry).toMatchObject({ version: 2, changed: true, dryRun: true });
    expect((await cliJson<{ latestVersion: number }>(["policy", "show", "acc", ...site()])).latestVersion).toBe(1);
    const applied = await cliJson<{ version: number; changed: boolean; notifiedVmIds: string[]; diff: unknown[] }>(["policy", "apply", file, ...site()]);
    expect(applied).toMatchObject({ version: 2, changed: true, notifiedVmIds: ["vm1"] });
    expect(applied.diff).toEqual(
      expect.arrayContaining([
        { path: "frequency", from: "1h", to: "1s" },
        { path: "compressionLevel", from: "1", to: "9" },
      ]),
    );

    const writeStart = Date.now();
    await t.vm.guestWrite("vda", ["write -P 0x22 8M 2M", "write -P 0x33 20M 1M"]);
    const writeDone = Date.now();
    const snapshot = join(t.dir, "primary.raw");
    await convertImage(t.vm.guestUri("vda"), snapshot, { srcFormat: "raw", dstFormat: "raw" });
    // Acknowledged as the agent logs it (the site's ledger commit comes a moment before the ack).
    await waitFor("three cycles under acc@2", () => (acked(t).filter((l) => (l.seq ?? 0) > before).length >= 3 ? true : undefined), 90_000).catch((e: Error) => {
      throw new Error(e.message + diag());
    });
    const after = acked(t).filter((l) => (l.seq ?? 0) > before);
    expect(after.length).toBeGreaterThanOrEqual(3);
    for (const l of after) expect([l.policy, l.compressionLevel]).toEqual(["acc@2", 9]);
    expect(
      acked(t)
        .filter((l) => (l.seq ?? 0) <= before)
        .map((l) => [l.policy, l.compressionLevel]),
    ).toEqual([["acc@1", 1]]);
    expect(
      agentLog(t)
        .filter((l) => l.msg === "policy changed by the replica site: it applies from the next cycle")
        .map((l) => [l.policy, l.frequency, l.compressionLevel]),
    ).toEqual([["acc@2", "1s", 9]]);
    // The same agent process throughout: no restart.
    expect(agent.child.exitCode).toBeNull();
    expect(agentLog(t).filter((l) => l.msg === "agent started")).toHaveLength(1);

    // A point cut after the writes (compressed at level 9) is byte-identical to the primary.
    await waitFor("a point cut after the writes", async () => ((await t.relationship()).points.some((p) => Date.parse(p.cutoffAt) > writeDone) ? true : undefined), 90_000);
    const state = await t.relationship();
    const point = state.points.find((p) => Date.parse(p.cutoffAt) > writeDone)!;
    expect(Date.parse(point.cutoffAt)).toBeGreaterThan(writeStart);
    const cmp = await compareImages(point.disks[0]!.imagePath, snapshot, { formatA: "qcow2", formatB: "raw" });
    expect(cmp.detail).toMatch(/identical/i);

    // Health and the fleet view take the bound policy's thresholds and name.
    const status = await cliJson<{ relationships: Array<{ policyName: string }> }>(["status", "vm1", ...site()]);
    expect(status.relationships[0]!.policyName).toBe("acc");
    const diff = await cliJson<{ from: number; to: number; diff: unknown[] }>(["policy", "diff", "acc", ...site()]);
    expect(diff).toMatchObject({ from: 1, to: 2 });
    expect(diff.diff).toContainEqual({ path: "frequency", from: "1h", to: "1s" });

    // A site binding wins: back to the built-in default, i.e. the agent config's own 1 h.
    const bound = await cliJson<{ changed: boolean; agentNotified: boolean }>(["protect", "vm1", "--policy", "default", ...site()]);
    expect(bound).toMatchObject({ changed: true, agentNotified: true });
    await waitFor(
      "the agent back on its config",
      () => (agentLog(t).some((l) => l.msg.startsWith("policy changed") && l.policy === "config" && l.frequency === "3600s") ? true : undefined),
      30_000,
    );

    // Bindings and versions are in the ledger: a restarted site has them.
    await t.daemons[0]!.kill("SIGTERM");
    await t.startSite(t.siteB);
    const list = await cliJson<{ policies: Array<{ name: string; latestVersion: number; boundVmIds: string[] }>; defaultVmIds: string[] }>(["policy", "list", ...site()]);
    expect(list.policies).toEqual([expect.objectContaining({ name: "acc", latestVersion: 2, boundVmIds: [] })]);
    expect(list.defaultVmIds).toEqual(["vm1"]);
    expect((await bindingEvents(t, "vm1")).map((e) => [e.data.policyName, e.data.source])).toEqual([
      ["acc", "agent-config"],
      ["default", "site"],
    ]);
  }, 300_000);

  it("holds the initial replication until the policy's scheduled time, and a policy applied meanwhile re-times it", async () => {
    const t = await setup("qr-policy-at-", { diskBytes: 16 * MiB, intervalSeconds: 3600 });
    const site = ["--dir", t.siteB];
    await t.startSite(t.siteB);
    const file = join(t.dir, "later.yaml");
    writeFileSync(file, 'name: later\nfrequency: 1h\ninitialReplication: { at: "2027-12-05T02:00:00Z" }\n');
    await cliJson(["policy", "apply", file, ...site]);
    // Bound on the site before the agent ever connects (no relationship yet).
    expect(await cliJson(["protect", "vm1", "--policy", "later", ...site])).toMatchObject({ changed: true, agentNotified: false, relationshipExists: false });
    await t.vm.guestWrite("vda", ["write -P 0x44 0 1M"]);
    t.startAgent();
    await waitFor(
      "the agent to wait for the scheduled time",
      () => (agentLog(t).some((l) => l.msg === "initial replication scheduled by the policy: waiting") ? true : undefined),
      60_000,
    );
    expect((await t.relationship()).lastCycleSeq).toBe(0);
    // Status says what the VM waits for.
    const status = await cliJson<{ relationships: Array<{ initialReplicationWait: string }> }>(["status", "vm1", ...site]);
    expect(status.relationships[0]?.initialReplicationWait).toBe("scheduled for 2027-12-05T02:00:00.000Z (policy)");
    writeFileSync(file, "name: later\nfrequency: 1h\ninitialReplication: now\n");
    expect(await cliJson(["policy", "apply", file, ...site])).toMatchObject({ version: 2, notifiedVmIds: ["vm1"] });
    await waitFor("the initial replication", async () => ((await t.relationship()).lastCycleSeq >= 1 ? true : undefined), 90_000);
    // The site's ledger commit comes a moment before the agent logs its ack.
    await waitFor("the agent's ack of the initial replication", () => (acked(t).length >= 1 ? true : undefined), 30_000);
    expect(acked(t).map((l) => [l.seq, l.policy])).toEqual([[1, "later@2"]]);
  }, 300_000);

  it("a resync held outside the policy's resync window starts when a new version's window includes now, recorded as the policy's go-ahead", async () => {
    const t = await setup("qr-policy-window-", { diskBytes: 16 * MiB, intervalSeconds: 1 });
    const site = ["--dir", t.siteB];
    await t.startSite(t.siteB);
    const hhmm = (offsetHours: number) => {
      const d = new Date(Date.now() + offsetHours * 3_600_000);
      return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
    };
    const file = join(t.dir, "night.yaml");
    const spec = (from: string, to: string) => `name: night\nfrequency: 1s\nresync: { mode: automatic, window: { from: "${from}", to: "${to}" } }\n`;
    writeFileSync(file, spec(hhmm(2), hhmm(3)));
    await cliJson(["policy", "apply", file, ...site]);
    await cliJson(["protect", "vm1", "--policy", "night", ...site]);
    await t.vm.guestWrite("vda", ["write -P 0x11 0 4M"]);
    t.startAgent();
    await waitFor("two points", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 90_000);

    // kill -9 of the primary's QEMU: its bitmaps are gone, a resync is required.
    await t.vm.guestWrite("vda", ["write -P 0x22 10M 1M"]);
    await t.vm.proc.kill("SIGKILL");
    rmSync(t.vm.qmpSocketPath, { force: true });
    rmSync(t.vm.nbdSocketPath, { force: true });
    await t.vm.restart();
    await waitFor("resync-required", async () => ((await t.relationship()).state === "resync-required" ? true : undefined), 120_000);
    await waitFor("the agent waiting", () => (agentLog(t).some((l) => l.msg.startsWith("waiting for an operator")) ? true : undefined), 60_000);
    expect((await relationshipEvents(t)).some((e) => e.type === "ResyncStarted")).toBe(false);

    writeFileSync(file, spec(hhmm(-1), hhmm(1)));
    expect(await cliJson(["policy", "apply", file, ...site])).toMatchObject({ version: 2, notifiedVmIds: ["vm1"] });
    await waitFor("the resync committed", async () => ((await relationshipEvents(t)).some((e) => e.type === "ResyncCompleted") ? true : undefined), 120_000);
    const events = await relationshipEvents(t);
    const approved = events.find((e) => e.type === "ResyncApproved")!;
    expect(approved.metadata).toMatchObject({ actor: "policy night@2", actorRole: "policy" });
    const state = await t.relationship();
    expect(state.state).toBe("replicating");
    const cmp = await compareImages(state.points.at(-1)!.disks[0]!.imagePath, t.vm.guestUri("vda"), { formatA: "qcow2", formatB: "raw" });
    expect(cmp.detail).toMatch(/identical/i);
  }, 300_000);
});
