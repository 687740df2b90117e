/** Refused control calls in the ledger: one event at once, then one per minute per identity and RPC however many follow. */
import { afterEach, describe, expect, it, vi } from "vitest";
import { silentLogger } from "../../../src/common/logger.js";
import { getInMemoryEventStore, type EventStore } from "../../../src/ledger/index.js";
import { AUDIT_STREAM, RefusalAudit, type Refusal } from "../../../src/site/controlPlane/refusalAudit.js";

const refusal = (over: Partial<Refusal> = {}): Refusal => ({
  identity: "agent-x",
  role: "agent",
  rpc: "Failover",
  needed: "operator",
  reason: "AGENT_ON_CONTROL_PLANE",
  message: "'agent-x' (role agent) may not call Failover: ...",
  vmId: "vm1",
  vmIdMalformed: false,
  peer: "127.0.0.1",
  ...over,
});

const audit = async (store: EventStore): Promise<Array<Record<string, unknown>>> =>
  (await store.readStream(AUDIT_STREAM)).map((e) => ({ ...e.data, actor: e.metadata.actor, actorRole: e.metadata.actorRole }));

afterEach(() => vi.useRealTimers());

describe("RefusalAudit", () => {
  it("records the first refusal at once, counts identical ones for a minute, then records them as one event", async () => {
    vi.useFakeTimers();
    const store = getInMemoryEventStore();
    const a = new RefusalAudit(store, silentLogger);
    await a.record(refusal());
    expect(await audit(store)).toEqual([
      expect.objectContaining({
        identity: "agent-x",
        role: "agent",
        rpc: "Failover",
        needed: "operator",
        reason: "AGENT_ON_CONTROL_PLANE",
        count: 1,
        vmIds: ["vm1"],
        peers: ["127.0.0.1"],
        actor: "agent-x",
        actorRole: "agent",
      }),
    ]);
    // A flood: 500 refusals of the same caller and RPC, on many VMs, some with a malformed id.
    for (let i = 0; i < 500; i++) await a.record(refusal(i % 100 === 0 ? { vmId: undefined, vmIdMalformed: true } : { vmId: `vm${i % 30}` }));
    expect(await audit(store)).toHaveLength(1);
    vi.advanceTimersByTime(60_000);
    await a.settled();
    const events = await audit(store);
    expect(events).toHaveLength(2);
    expect(events[1]).toMatchObject({ count: 500, malformedVmIds: 5, peers: ["127.0.0.1"] });
    expect((events[1]!.vmIds as string[]).length).toBe(10);
    // Still refused: the next window is twice as long (two minutes), then a quiet window closes the key.
    await a.record(refusal());
    vi.advanceTimersByTime(60_000);
    await a.settled();
    expect((await audit(store)).map((e) => e.count)).toEqual([1, 500]);
    vi.advanceTimersByTime(60_000);
    await a.settled();
    expect((await audit(store)).map((e) => e.count)).toEqual([1, 500, 1]);
    vi.advanceTimersByTime(240_000);
    await a.settled();
    // A new refusal after the window closed is recorded at once again.
    await a.record(refusal());
    expect((await audit(store)).map((e) => e.count)).toEqual([1, 500, 1, 1]);
    await a.flush();
  });

  it("an agent refused every 30 s for a day adds about one event an hour, and every refusal is counted", async () => {
    vi.useFakeTimers();
    const store = getInMemoryEventStore();
    const a = new RefusalAudit(store, silentLogger);
    const calls = (24 * 3600) / 30;
    for (let i = 0; i < calls; i++) {
      await a.record(refusal({ rpc: "Replicate", needed: "authorization", reason: "PRIMARY_NOT_AUTHORIZED" }));
      vi.advanceTimersByTime(30_000);
      await a.settled();
    }
    await a.flush();
    const counts = (await audit(store)).map((e) => e.count as number);
    expect(counts.reduce((x, y) => x + y, 0)).toBe(calls);
    // 1 at once, windows of 1, 2, 4, 8, 16, 32 minutes, then hourly.
    expect(counts.length).toBeLessThanOrEqual(32);
    expect(counts.length).toBeGreaterThanOrEqual(24);
  });

  it("keys by identity, role and RPC: a different RPC or identity is its own event at once", async () => {
    const store = getInMemoryEventStore();
    const a = new RefusalAudit(store, silentLogger);
    await a.record(refusal());
    await a.record(refusal({ rpc: "CompleteFailover" }));
    await a.record(refusal({ identity: "vera-viewer", role: "viewer", reason: "ROLE_INSUFFICIENT", vmId: undefined }));
    await a.record(refusal());
    const events = await audit(store);
    expect(events.map((e) => [e.identity, e.rpc, e.count, e.vmIds])).toEqual([
      ["agent-x", "Failover", 1, ["vm1"]],
      ["agent-x", "CompleteFailover", 1, ["vm1"]],
      ["vera-viewer", "Failover", 1, []],
    ]);
    // flush (the site's stop) records what was only counted, and nothing after it.
    await a.flush();
    expect((await audit(store)).map((e) => [e.identity, e.rpc, e.count])).toEqual([
      ["agent-x", "Failover", 1],
      ["agent-x", "CompleteFailover", 1],
      ["vera-viewer", "Failover", 1],
      ["agent-x", "Failover", 1],
    ]);
    await a.record(refusal());
    expect(await audit(store)).toHaveLength(4);
  });

  it("a ledger that cannot be written does not fail the refusal (it is logged)", async () => {
    const store = getInMemoryEventStore();
    await store.close();
    const a = new RefusalAudit(store, silentLogger);
    await expect(a.record(refusal())).resolves.toBeUndefined();
  });
});
