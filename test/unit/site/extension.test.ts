import { describe, expect, it } from "vitest";
import { completeFailover, getInMemoryEventStore, type RelationshipState } from "../../../src/ledger/index.js";
import { nextMerge } from "../../../src/site/retention.js";
import { ExtensionLedger, extensionStream } from "../../../src/site/extension/extensionLedger.js";
import { Extensions, type ExtensionFollowDeps } from "../../../src/site/extension/extensions.js";
import { silentLogger } from "../../../src/common/logger.js";
import type { SiteCredentials } from "../../../src/transport/index.js";
import { enabled, failedOverUnplanned, fold, incremental, initialCommitted, initialStarted, run } from "../ledgerDomain/fixtures.js";

const VM = "web1";
const upTo = (n: number) => [enabled, initialStarted, initialCommitted, ...Array.from({ length: n - 1 }, (_, i) => incremental(i + 2))];
const admin = { identity: "alice", role: "operator" as const };
const target = { targetAddress: "127.0.0.1:7443", targetSiteId: "site-c", intervalSeconds: 0 };
const forwarded = (pointId: string, targetSeq: number) => ({
  pointId,
  cutoffAt: "2030-01-01T00:00:00.000Z",
  targetPointId: `rp-${targetSeq}`,
  targetSeq,
  targetGeneration: 1,
  kind: "incremental" as const,
  dataBytes: 1,
  wireBytes: 1,
});

/** No VM failed over here: the forwarders' tests never reach an agent. */
const noFailovers = {
  failoverVmOf: () => undefined,
  releaseFailedOverVm: () => Promise.reject(new Error("no failover VM")),
  startReverseAgent: () => {
    throw new Error("no agent expected");
  },
  replicationAgentPid: () => undefined,
  stopReplicationAgent: async () => undefined,
};

/**
 * Extensions on `ledger` for a VM whose relationship is `relationship` (default: enabled, no point
 * yet, so forwarders wait for a first point that never comes): only the ledger, the holds and the
 * failover follow-up (`failovers`, over noFailovers) are exercised.
 */
function extensionsOn(ledger: ExtensionLedger, opts: { relationship?: RelationshipState; failovers?: Partial<ExtensionFollowDeps["failovers"]> } = {}): Extensions {
  return new Extensions(
    {
      siteId: "site-b",
      loadRelationship: async () => opts.relationship ?? fold(VM, enabled),
      storage: {
        holdChains: () => () => undefined,
        pointExtents: () => (async function* () {})(),
        seedChunkHashes: () => (async function* () {})(),
        loadChunkHashes: () => ({ unusable: "none in this test" }),
        indexDigest: "sha256",
      },
      serialized: (_vm, fn) => fn(),
      afterRead: () => undefined,
      stopPrimary: () => Promise.reject(new Error("no primary in this test")),
      recordDownstreamFailover: () => Promise.reject(new Error("no failover in this test")),
      downstreamFailoverCancelled: () => Promise.reject(new Error("no failover in this test")),
      tls: {} as SiteCredentials,
      logger: silentLogger,
    },
    ledger,
    { failovers: { ...noFailovers, ...opts.failovers }, tlsFiles: { caFile: "ca.crt", certFile: "site-b.crt", keyFile: "site-b.key" } },
  );
}

describe("extended replication: the ledger's record and what retention keeps for it", () => {
  it("configure, forward and stop are recorded with their caller; an invalid target is refused", async () => {
    const store = getInMemoryEventStore();
    const ledger = new ExtensionLedger(store);
    await expect(ledger.configure(VM, { ...target, targetAddress: "no port" }, admin)).rejects.toMatchObject({ code: "EXTENSION_INVALID" });
    await expect(ledger.configure(VM, { ...target, intervalSeconds: -1 }, admin)).rejects.toMatchObject({ code: "EXTENSION_INVALID" });
    await expect(ledger.stop(VM, admin)).rejects.toMatchObject({ code: "EXTENSION_NOT_CONFIGURED" });
    await ledger.configure(VM, target, admin);
    // The same configuration again records nothing.
    await ledger.configure(VM, target, admin);
    await ledger.recordForwarded(VM, forwarded("rp-3", 1));
    await expect(ledger.configure(VM, { ...target, targetSiteId: "site-d" }, admin)).rejects.toThrow(/stop that first/);
    const stopped = await ledger.stop(VM, admin);
    expect(stopped.target).toBeUndefined();
    expect(stopped.stoppedTarget).toEqual(target);
    expect(stopped.forwarded.map((f) => f.pointId)).toEqual(["rp-3"]);
    const events = await store.readStream(extensionStream(VM));
    expect(events.map((e) => e.type)).toEqual(["ExtendedReplicationConfigured", "PointForwarded", "ExtendedReplicationStopped"]);
    expect(events[0]!.metadata).toMatchObject({ actor: "alice", actorRole: "operator" });
    expect(await ledger.vmIds()).toEqual([VM]);
  });

  it("retention keeps the last forwarded point and every later one, and merges the older ones", async () => {
    const store = getInMemoryEventStore();
    const ledger = new ExtensionLedger(store);
    const rel = fold(VM, ...upTo(6));
    const spec = { tiers: [], minPoints: 1 };
    const now = Date.parse("2030-01-01T00:00:00Z");
    const ext = extensionsOn(ledger);
    // Nothing configured: nothing held, the oldest goes first.
    expect(ext.heldPoints(VM, rel).size).toBe(0);
    await ledger.configure(VM, target, admin);
    await ledger.recordForwarded(VM, forwarded("rp-4", 1));
    const started = extensionsOn(ledger);
    await started.start();
    try {
      const held = started.heldPoints(VM, rel);
      expect([...held]).toEqual(["rp-4", "rp-5", "rp-6"]);
      const plan = nextMerge(rel, spec, now, held);
      expect(plan.plan.keep).toEqual(["rp-4", "rp-5", "rp-6"]);
      expect(plan.pointId).toBe("rp-1");
      expect(started.status(VM, rel)).toMatchObject({ state: "forwarding", lastForwardedPointId: "rp-4", pointsForwarded: 1n, targetSiteId: "site-c" });
      // Stopped: retention is free again, status still tells what was forwarded.
      await started.stop(VM, admin);
      expect(started.heldPoints(VM, rel).size).toBe(0);
      expect(started.status(VM, rel)).toMatchObject({ state: "stopped", targetSiteId: "site-c", lastForwardedPointId: "rp-4" });
    } finally {
      await started.close();
    }
  });

  it("extend --stop on a failed-over VM ends its agent even when the ledger has no FailoverFollowed (the site died before recording it)", async () => {
    const ledger = new ExtensionLedger(getInMemoryEventStore());
    const stoppedAgents: string[] = [];
    const completed = run(fold(VM, enabled, initialStarted, initialCommitted, incremental(2), failedOverUnplanned()), (s) => completeFailover(s));
    const ext = extensionsOn(ledger, { relationship: completed, failovers: { stopReplicationAgent: async (vmId: string) => void stoppedAgents.push(vmId) } });
    await ledger.configure(VM, target, admin);
    expect((await ledger.load(VM)).followed).toBeUndefined();
    await ext.stop(VM, admin);
    expect(stoppedAgents).toEqual([VM]);
    await ext.close();
  });

  it("a failover completion and an extend at once start one agent, not two (one would run unsupervised)", async () => {
    const ledger = new ExtensionLedger(getInMemoryEventStore());
    const completed = run(fold(VM, enabled, initialStarted, initialCommitted, incremental(2), failedOverUnplanned()), (s) => completeFailover(s));
    let released = false;
    const agents: number[] = [];
    const ext = extensionsOn(ledger, {
      relationship: completed,
      failovers: {
        failoverVmOf: () => ({ released, agentStopped: false }),
        // The monitor is handed over after a turn of the event loop, as QMP's close is.
        releaseFailedOverVm: async () => {
          await new Promise((r) => setImmediate(r));
          released = true;
          return { qmpSocket: "/run/b/web1.qmp" };
        },
        startReverseAgent: () => {
          agents.push(agents.length + 100);
          return { pid: agents.at(-1)!, logFile: "agent.log", configFile: "agent.yaml" };
        },
      },
    });
    await ledger.configure(VM, target, admin);
    await ext.start();
    expect(agents).toHaveLength(1);
    released = false;
    agents.length = 0;
    await Promise.all([ext.failoverCompleted(VM), ext.configure(VM, { ...target, intervalSeconds: 5 }, admin)]);
    expect(agents).toHaveLength(1);
    await ext.close();
  });

  it("status: an agent that ended by itself is not shown replicating with its old pid; the error says what to do", async () => {
    const ledger = new ExtensionLedger(getInMemoryEventStore());
    const completed = run(fold(VM, enabled, initialStarted, initialCommitted, incremental(2), failedOverUnplanned()), (s) => completeFailover(s));
    let pid: number | undefined = 4242;
    const ext = extensionsOn(ledger, { relationship: completed, failovers: { failoverVmOf: () => ({ released: true, agentStopped: false }), replicationAgentPid: () => pid } });
    await ledger.configure(VM, target, admin);
    await ledger.recordFollowed(VM, { generation: 2, targetGeneration: 4, reason: "x", agentPid: 4242 });
    await ext.start();
    expect(ext.status(VM, completed)).toMatchObject({ state: "following-failover", agentPid: 4242, lastError: "" });
    pid = undefined;
    const gone = ext.status(VM, completed);
    expect(gone).toMatchObject({ state: "following-failover", agentPid: 0 });
    expect(gone?.lastError).toMatch(/agent toward site site-c is not running .*extend web1 --stop/);
    await ext.close();
  });
});
