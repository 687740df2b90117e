/**
 * Extended replication (A -> B -> C): a failover at C cancelled after it went through B.
 * - At B, A's agent was fenced (FailedOverDownstream): told by C (or by an operator at B), B lifts
 *   the fence, and A's agent replicates again at its generation; the fence's message names the
 *   operator's command for a cancel B could not be told of.
 * - At C, the cancelled failover's generation is handed over to B but never adopted when no forward
 *   follows: B's agent after a failover at B then presents exactly that generation, which C takes
 *   as the failover upstream it is (one above), not as the old primary carrying on.
 * Real Relationships over a real SQLite ledger.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../../src/common/logger.js";
import { RejectReason } from "../../../src/gen/qreplica/v1/replication.js";
import {
  InvalidCommandInputError,
  RELATIONSHIP_STREAM_PREFIX,
  cancelFailover,
  commitCycle,
  enableReplication,
  executeCommand,
  getSqliteEventStore,
  loadRelationship,
  recordDownstreamFailover,
  startInitialReplication,
  type EventStore,
} from "../../../src/ledger/index.js";
import { cancelFailoverCommand, liftDownstreamFailover, tellForwardingSite } from "../../../src/site/extension/downstreamCancel.js";
import { Relationships } from "../../../src/site/relationships/relationships.js";
import type { ReplicaStorage } from "../../../src/storage/index.js";
import { cutoff, cycleInput, enableInput, failedOverUnplanned, incremental } from "../ledgerDomain/fixtures.js";

const VM = "vm1";
const AGENT_A = "agent-a";
const dirs: string[] = [];
const stores: EventStore[] = [];

afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A replica of VM1 from `primary` at `primarySite`, with points 1 and 2. */
async function replica(siteId: string, primarySite: string, primary: string) {
  const dir = mkdtempSync(join(tmpdir(), "qr-dscancel-"));
  dirs.push(dir);
  const store = getSqliteEventStore({ path: join(dir, "ledger.db") });
  stores.push(store);
  await executeCommand(store, VM, (s) => enableReplication(s, enableInput({ primarySiteId: primarySite, primaryIdentity: primary, replicaSiteId: siteId })));
  await executeCommand(store, VM, (s) => startInitialReplication(s, { cycleSeq: 1, cutoffAt: cutoff(1), generation: 1 }));
  await executeCommand(store, VM, (s) => commitCycle(s, cycleInput(VM, 1, "full")));
  await executeCommand(store, VM, incremental(2));
  const relationships = new Relationships(store, {} as ReplicaStorage, { siteId, defaultMaxPoints: 24 }, silentLogger);
  const helloFrom = (primaryIdentity: string, presentedGeneration: number, upstreamFailover?: string) =>
    relationships.acceptHello({
      vmId: VM,
      primarySiteId: primarySite,
      primaryIdentity,
      presentedGeneration,
      disks: enableInput().disks,
      ...(upstreamFailover ? { upstreamFailover } : {}),
    });
  const types = async () => (await store.readStream(`${RELATIONSHIP_STREAM_PREFIX}${VM}`)).map((e) => e.type);
  return { store, relationships, helloFrom, types };
}

/** Site B after a planned failover at C went through it: A's agent fenced. */
async function fencedAtB() {
  const b = await replica("site-b", "site-a", AGENT_A);
  await executeCommand(b.store, VM, (s) =>
    recordDownstreamFailover(s, {
      targetSiteId: "site-c",
      pointId: s.points.at(-1)!.pointId,
      targetPointId: "rp-c-3",
      primaryStoppedAt: "2026-12-05T10:00:00.000Z",
      stopMethod: "acpi",
      requestedBy: "ops-c",
      requestedByRole: "operator",
      recordedAt: "2026-12-05T10:00:02.000Z",
    }),
  );
  const restarted: string[] = [];
  const deps = { store: b.store, serializer: { run: <T>(_vm: string, fn: () => Promise<T>) => fn() }, relationships: b.relationships, logger: silentLogger };
  return { ...b, deps, restarted, forwardAgain: async (vmId: string) => void restarted.push(vmId) };
}

describe("a planned failover at C cancelled after it went through B", () => {
  it("the fence's message names the command that lifts it at B, for a cancel B was not told of", async () => {
    const { store } = await fencedAtB();
    const reason = (await loadRelationship(store, VM)).state.pauseReason;
    expect(reason).toMatch(/If that failover is cancelled at site-c instead, site-c tells this site/);
    expect(reason).toMatch(/run 'qreplica failover vm1 cancel --dir <this site's dir>' here to lift it — only once it is cancelled there/);
  });

  it("told by C: the fence is lifted, recorded with who cancelled there, and A's agent replicates again at its generation", async () => {
    const { store, deps, helloFrom, types } = await fencedAtB();
    await expect(helloFrom(AGENT_A, 1)).rejects.toMatchObject({ reason: RejectReason.REJECT_REASON_STALE_GENERATION });
    const lifted = await liftDownstreamFailover(deps, VM, { toldBy: "target", targetSiteId: "site-c", cancelledBy: "ops-c", targetGeneration: 2 });
    expect(lifted).toMatchObject({ state: "replicating", generation: 1, pauseReason: undefined, downstreamFailover: undefined });
    const event = (await store.readStream(`${RELATIONSHIP_STREAM_PREFIX}${VM}`)).at(-1)!;
    expect(event).toMatchObject({
      type: "DownstreamFailoverCancelled",
      data: { targetSiteId: "site-c", toldBy: "target", cancelledBy: "ops-c", targetGeneration: 2, primaryIdentity: AGENT_A },
    });
    expect(event.metadata.actor).toBe("ops-c");
    // A's VM started again: its agent is the primary it was, accepted at its generation; the points are kept.
    expect(await helloFrom(AGENT_A, 1)).toMatchObject({ generation: 1, resume: "incremental" });
    expect((await loadRelationship(store, VM)).state.points.map((p) => p.pointId)).toHaveLength(2);
    expect((await types()).filter((t) => t === "StaleGenerationRefused")).toHaveLength(1);
  });

  it("'qreplica failover VM cancel' at B (C could not tell it): lifted with the operator recorded, the forwarder runs again; no fence: the ordinary cancel", async () => {
    const { store, deps, restarted, forwardAgain } = await fencedAtB();
    const caller = { identity: "ops-b", role: "operator" as const };
    const cancelledHere: string[] = [];
    const command = {
      ...deps,
      forwardAgain,
      sessionFor: () => undefined,
      cancelHere: async (vmId: string) => {
        cancelledHere.push(vmId);
        return "replicating";
      },
    };
    expect(await cancelFailoverCommand(command, VM, caller)).toEqual({ state: "replicating", downstreamFenceLifted: true });
    const event = (await store.readStream(`${RELATIONSHIP_STREAM_PREFIX}${VM}`)).at(-1)!;
    expect(event).toMatchObject({ type: "DownstreamFailoverCancelled", data: { toldBy: "operator", targetSiteId: "site-c" }, metadata: { actor: "ops-b", actorRole: "operator" } });
    expect(restarted).toEqual([VM]);
    expect(cancelledHere).toEqual([]);
    // Nothing left to lift: the ordinary cancel of a failover here, the forwarder untouched.
    expect(await cancelFailoverCommand(command, VM, caller)).toEqual({ state: "replicating", downstreamFenceLifted: false });
    expect(cancelledHere).toEqual([VM]);
    expect(restarted).toEqual([VM]);
  });

  it("a word from another site than the one the VM failed over at lifts nothing", async () => {
    const { store, deps } = await fencedAtB();
    await expect(liftDownstreamFailover(deps, VM, { toldBy: "target", targetSiteId: "site-d", cancelledBy: "x", targetGeneration: 5 })).rejects.toThrow(InvalidCommandInputError);
    expect((await loadRelationship(store, VM)).state.downstreamFailover?.targetSiteId).toBe("site-c");
  });

  it("at C, the cancel tells the forwarding site on its open stream, with C's generation after the cancel", async () => {
    const c = await replica("site-c", "site-b", "site-b");
    await executeCommand(c.store, VM, failedOverUnplanned());
    await executeCommand(c.store, VM, (s) => cancelFailover(s));
    const told: unknown[] = [];
    const session = { forwardingSite: true, notify: async (n: unknown) => void told.push(n) };
    const ctx = { sessionFor: () => session, relationships: c.relationships, logger: silentLogger };
    await tellForwardingSite(ctx, VM, { identity: "ops-c", role: "operator" });
    expect(told).toEqual([{ $case: "failoverCancelled", cancelledBy: "ops-c", generation: 2 }]);
    // An agent's stream is not told; no stream at all is no error (B's fence message names the command).
    await tellForwardingSite({ ...ctx, sessionFor: () => ({ ...session, forwardingSite: false }) }, VM, { identity: "ops-c", role: "operator" });
    await tellForwardingSite({ ...ctx, sessionFor: () => undefined }, VM, { identity: "ops-c", role: "operator" });
    expect(told).toHaveLength(1);
  });
});

describe("a failover at B declared at the generation of a cancelled failover at C", () => {
  const R1 = "VM vm1 failed over at site site-b (unplanned, to point rp-2, generation 2 there)";

  it("is a failover upstream all the same: recorded one above, the cancelled one's and older generations fenced", async () => {
    const { store, helloFrom, types } = await replica("site-c", "site-b", "site-b");
    await executeCommand(store, VM, failedOverUnplanned());
    await executeCommand(store, VM, (s) => cancelFailover(s));
    // B's forwarder never came back (no forward), so B still knows generation 1: its agent presents 2.
    expect(await helloFrom("site-b", 2, R1)).toMatchObject({ generation: 3, resume: "resync" });
    const after = (await loadRelationship(store, VM)).state;
    expect(after).toMatchObject({ generation: 3, state: "resync-required", upstreamFailover: { generation: 3, previousGeneration: 2, reason: R1 } });
    expect(after.generationHandover).toBeUndefined();
    expect((await types()).filter((t) => t === "PrimaryFailedOverUpstream")).toHaveLength(1);
    // B's old forwarder, at 1 (the cancel's handover) or 2, is stale now.
    for (const g of [1, 2]) await expect(helloFrom("site-b", g)).rejects.toMatchObject({ reason: RejectReason.REJECT_REASON_STALE_GENERATION });
    // The agent, having adopted 3: the current primary, nothing new.
    expect(await helloFrom("site-b", 3, R1)).toMatchObject({ generation: 3 });
    expect((await types()).filter((t) => t === "PrimaryFailedOverUpstream")).toHaveLength(1);
  });

  it("the same agent, handed over a later cancel's generation and presenting it again, is no new failover", async () => {
    const { store, helloFrom, types } = await replica("site-c", "site-b", "site-b");
    expect(await helloFrom("site-b", 2, R1)).toMatchObject({ generation: 2 });
    await executeCommand(store, VM, failedOverUnplanned());
    await executeCommand(store, VM, (s) => cancelFailover(s));
    // Handed over from 2 to 3, then the agent restarts before a cycle and presents 3 with its reason.
    expect(await helloFrom("site-b", 2, R1)).toMatchObject({ generation: 3 });
    expect(await helloFrom("site-b", 3, R1)).toMatchObject({ generation: 3 });
    expect((await types()).filter((t) => t === "PrimaryFailedOverUpstream")).toHaveLength(1);
  });
});
