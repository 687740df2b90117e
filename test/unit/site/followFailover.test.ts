/**
 * Extended replication after a failover at this site (B): once the failover is completed, the
 * failover VM's agent replicates on to C, presenting a generation above the one C last told B,
 * with the reason; nothing starts before completion, twice, or without a failover VM.
 */
import { describe, expect, it } from "vitest";
import { completeFailover, getInMemoryEventStore, type RelationshipState } from "../../../src/ledger/index.js";
import { silentLogger } from "../../../src/common/logger.js";
import { ExtensionLedger } from "../../../src/site/extension/extensionLedger.js";
import { FollowFailoverError, followFailover, type FollowDeps } from "../../../src/site/extension/followFailover.js";
import type { ReverseAgentOptions } from "../../../src/site/failover/reverseAgent.js";
import { enabled, failedOverUnplanned, fold, incremental, initialCommitted, initialStarted, run } from "../ledgerDomain/fixtures.js";

const VM = "web1";
const admin = { identity: "alice", role: "operator" as const };
const target = { targetAddress: "127.0.0.1:7443", targetSiteId: "site-c", intervalSeconds: 3 };
const waiting = fold(VM, enabled, initialStarted, initialCommitted, incremental(2), failedOverUnplanned());
const completed = run(waiting, (s) => completeFailover(s));

function deps(rel: RelationshipState, vm: { released: boolean; agentStopped?: boolean } | undefined) {
  const started: ReverseAgentOptions[] = [];
  const store = getInMemoryEventStore();
  const ledger = new ExtensionLedger(store);
  const d: FollowDeps = {
    siteId: "site-b",
    loadRelationship: async () => rel,
    failovers: {
      failoverVmOf: () => vm && { released: vm.released, agentStopped: vm.agentStopped ?? false },
      releaseFailedOverVm: async () => ({ qmpSocket: "/run/b/web1.qmp" }),
      startReverseAgent: (o) => {
        started.push(o);
        return { pid: 4242, logFile: "agent.log", configFile: "agent.yaml" };
      },
    },
    tlsFiles: { caFile: "ca.crt", certFile: "site-b.crt", keyFile: "site-b.key" },
    ledger,
    logger: silentLogger,
  };
  return { d, started, ledger };
}

describe("followFailover", () => {
  it("after completion: an agent toward C presents C's last generation + 1 with the failover as its reason, recorded", async () => {
    const { d, started, ledger } = deps(completed, { released: false });
    await ledger.configure(VM, target, admin);
    await ledger.recordForwarded(VM, {
      pointId: "p2",
      cutoffAt: "2030-01-01T00:00:00.000Z",
      targetPointId: "c7",
      targetSeq: 7,
      targetGeneration: 3,
      kind: "incremental",
      dataBytes: 1,
      wireBytes: 1,
    });
    const after = await followFailover(d, await ledger.load(VM));
    expect(started).toHaveLength(1);
    expect(started[0]).toMatchObject({
      siteId: "site-b",
      vmId: VM,
      qmpSocket: "/run/b/web1.qmp",
      replicaAddress: target.targetAddress,
      replicaSiteId: "site-c",
      intervalSeconds: 3,
      generation: 4,
      tls: { certFile: "site-b.crt" },
    });
    expect(started[0]!.upstreamFailover).toMatch(/VM web1 failed over at site site-b \(unplanned, to point .+, generation 2 there\)/);
    expect(after?.followed).toMatchObject({ generation: 2, targetGeneration: 4, agentPid: 4242 });
    // A second follow (another failover later) goes above this one's generation.
    const again = deps(completed, { released: false });
    await again.ledger.configure(VM, target, admin);
    await again.ledger.recordFollowed(VM, { generation: 2, targetGeneration: 4, reason: "x", agentPid: 1 });
    await followFailover(again.d, await again.ledger.load(VM));
    expect(again.started[0]!.generation).toBe(5);
  });

  it("a third site that never had the VM: generation 0 and no declaration (an initial replication there)", async () => {
    const { d, started, ledger } = deps(completed, { released: false });
    await ledger.configure(VM, target, admin);
    await followFailover(d, await ledger.load(VM));
    expect(started[0]).toMatchObject({ generation: 0 });
    expect(started[0]!.upstreamFailover).toBeUndefined();
  });

  it("nothing before the failover is completed, nothing when an agent already has the VM; an error without a failover VM", async () => {
    for (const [rel, vm] of [
      [waiting, { released: false }],
      [completed, { released: true }],
    ] as const) {
      const { d, started, ledger } = deps(rel, vm);
      await ledger.configure(VM, target, admin);
      expect(await followFailover(d, await ledger.load(VM))).toBeUndefined();
      expect(started).toHaveLength(0);
    }
    const none = deps(completed, undefined);
    await none.ledger.configure(VM, target, admin);
    await expect(followFailover(none.d, await none.ledger.load(VM))).rejects.toThrow(FollowFailoverError);
    await expect(followFailover(none.d, await none.ledger.load(VM))).rejects.toThrow(/no failover VM runs here/);
  });

  it("an agent stopped by 'extend --stop' left the monitor free: extending again starts a new one, above its generation", async () => {
    const { d, started, ledger } = deps(completed, { released: true, agentStopped: true });
    await ledger.configure(VM, target, admin);
    await ledger.recordFollowed(VM, { generation: 2, targetGeneration: 4, reason: "x", agentPid: 1 });
    const after = await followFailover(d, await ledger.load(VM));
    expect(started).toHaveLength(1);
    expect(started[0]).toMatchObject({ generation: 5, replicaSiteId: "site-c" });
    expect(after?.followed).toMatchObject({ targetGeneration: 5, agentPid: 4242 });
  });

  it("a target configured after another site's: its generations start from 0 (an initial replication there), not from the earlier site's", async () => {
    const { d, started, ledger } = deps(completed, { released: false });
    await ledger.configure(VM, target, admin);
    await ledger.recordForwarded(VM, {
      pointId: "p2",
      cutoffAt: "2030-01-01T00:00:00.000Z",
      targetPointId: "c7",
      targetSeq: 7,
      targetGeneration: 3,
      kind: "incremental",
      dataBytes: 1,
      wireBytes: 1,
    });
    await ledger.stop(VM, admin);
    await ledger.configure(VM, { ...target, targetSiteId: "site-d", targetAddress: "127.0.0.1:7444" }, admin);
    const state = await ledger.load(VM);
    expect(state).toMatchObject({ targetGeneration: 0, targetForwards: 0 });
    await followFailover(d, state);
    expect(started[0]).toMatchObject({ replicaSiteId: "site-d", generation: 0 });
    expect(started[0]!.upstreamFailover).toBeUndefined();
  });

  it("the same target configured again after a stop keeps what it told", async () => {
    const { ledger } = deps(completed, { released: false });
    await ledger.configure(VM, target, admin);
    await ledger.recordForwarded(VM, {
      pointId: "p2",
      cutoffAt: "2030-01-01T00:00:00.000Z",
      targetPointId: "c7",
      targetSeq: 7,
      targetGeneration: 3,
      kind: "incremental",
      dataBytes: 1,
      wireBytes: 1,
    });
    await ledger.stop(VM, admin);
    await ledger.configure(VM, { ...target, intervalSeconds: 9 }, admin);
    expect(await ledger.load(VM)).toMatchObject({ targetGeneration: 3, targetForwards: 1 });
  });
});
