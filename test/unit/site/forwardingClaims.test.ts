/**
 * Hello claims only the site forwarding a VM here may make (extended replication A -> B -> C, this
 * is C): `upstream_failover` and `forwarding_site`. Any other authorized primary (an agent of this
 * VM or of another, another site) is refused by name and recorded in the audit stream.
 * Real Relationships, authorizations and refusal audit over a real SQLite ledger.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../../src/common/logger.js";
import { Hello, RejectReason } from "../../../src/gen/qreplica/v1/replication.js";
import { commitCycle, enableReplication, executeCommand, getSqliteEventStore, loadRelationship, startInitialReplication, type EventStore } from "../../../src/ledger/index.js";
import { SiteAuthorizations } from "../../../src/site/authorizations.js";
import { AUDIT_STREAM, RefusalAudit } from "../../../src/site/controlPlane/refusalAudit.js";
import { helloRefusal, PROTOCOL_VERSION } from "../../../src/site/dataPlane/helloAdmission.js";
import { Relationships } from "../../../src/site/relationships/relationships.js";
import type { ReplicaStorage } from "../../../src/storage/index.js";
import { cutoff, cycleInput, enableInput, incremental } from "../ledgerDomain/fixtures.js";

const admin = { identity: "alice", role: "admin" as const };
const REASON = "VM web1 failed over at site site-b (unplanned, to point p2, generation 2 there)";
const dirs: string[] = [];
const stores: EventStore[] = [];

afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** Site C: web1 forwarded here by site-b; db1 replicated here straight from its agent at site-a. */
async function siteC() {
  const dir = mkdtempSync(join(tmpdir(), "qr-claims-"));
  dirs.push(dir);
  const store = getSqliteEventStore({ path: join(dir, "ledger.db") });
  stores.push(store);
  for (const [vmId, primarySiteId, primaryIdentity] of [
    ["web1", "site-b", "site-b"],
    ["db1", "site-a", "agent-db1"],
  ] as const) {
    await executeCommand(store, vmId, (s) => enableReplication(s, enableInput({ primarySiteId, primaryIdentity, replicaSiteId: "site-c" })));
    await executeCommand(store, vmId, (s) => startInitialReplication(s, { cycleSeq: 1, cutoffAt: cutoff(1), generation: 1 }));
    await executeCommand(store, vmId, (s) => commitCycle(s, cycleInput(vmId, 1, "full")));
    await executeCommand(store, vmId, incremental(2));
  }
  const authorizations = new SiteAuthorizations(store);
  for (const id of ["site-b", "agent-db1", "site-d"]) await authorizations.add(id, admin);
  const refusals = new RefusalAudit(store, silentLogger);
  const relationships = new Relationships(store, {} as ReplicaStorage, { siteId: "site-c", defaultMaxPoints: 24 }, silentLogger);
  const ctx = { siteId: "site-c", revocations: undefined, refusals, authorizations, relationships };
  const audited = async () => (await store.readStream(AUDIT_STREAM)).map((e) => e.data);
  return { store, ctx, relationships, audited };
}

const hello = (vmId: string, sourceSiteId: string, over: Partial<Hello> = {}): Hello =>
  Hello.fromPartial({
    protocolVersion: PROTOCOL_VERSION,
    vmId,
    sourceSiteId,
    generation: 2n,
    disks: enableInput().disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeBytes) })),
    ...over,
  });
const peer = (identity: string) => ({ identity, role: "agent" as const, certificate: undefined, host: "127.0.0.1" });

describe("who may declare a failover upstream", () => {
  it("the site forwarding the VM here: admitted, and the relationship records the failover", async () => {
    const { store, ctx, relationships, audited } = await siteC();
    expect(await helloRefusal(ctx, hello("web1", "site-b", { upstreamFailover: REASON }), peer("site-b"))).toBeUndefined();
    await relationships.acceptHello({
      vmId: "web1",
      primarySiteId: "site-b",
      primaryIdentity: "site-b",
      presentedGeneration: 2,
      disks: enableInput().disks,
      upstreamFailover: REASON,
    });
    expect((await loadRelationship(store, "web1")).state).toMatchObject({ generation: 2, state: "resync-required", upstreamFailover: { peerIdentity: "site-b" } });
    expect(await audited()).toEqual([]);
  });

  it("an agent of another VM, another site, and the VM's own agent: refused by name and recorded; nothing moves", async () => {
    const { store, ctx, audited } = await siteC();
    for (const [vmId, identity, source] of [
      ["web1", "agent-db1", "site-a"],
      ["web1", "site-d", "site-d"],
      // db1's own primary is an agent, not a site that forwards it: it cannot have failed over upstream.
      ["db1", "agent-db1", "site-a"],
    ] as const) {
      const refused = await helloRefusal(ctx, hello(vmId, source, { upstreamFailover: REASON }), peer(identity));
      expect(refused).toMatchObject({ reason: RejectReason.REJECT_REASON_UNAUTHORIZED, message: expect.stringContaining(`'${identity}'`) });
      expect(refused!.message).toMatch(/failover upstream/);
    }
    const events = await audited();
    expect(events.map((e) => [e.identity, e.reason, e.vmIds])).toEqual([
      ["agent-db1", "FORWARDING_CLAIM_REFUSED", ["web1"]],
      ["site-d", "FORWARDING_CLAIM_REFUSED", ["web1"]],
    ]);
    // The third (same identity and RPC within the minute) is counted, and recorded at the flush.
    await ctx.refusals.flush();
    expect((await audited()).at(-1)).toMatchObject({ identity: "agent-db1", count: 1, vmIds: ["db1"] });
    for (const vmId of ["web1", "db1"]) expect((await loadRelationship(store, vmId)).state).toMatchObject({ generation: 1, state: "replicating" });
  });
});

describe("who may claim to be the forwarding site", () => {
  it("the VM's forwarding site, and a site presenting its own certificate for a VM new here: admitted", async () => {
    const { ctx, audited } = await siteC();
    expect(await helloRefusal(ctx, hello("web1", "site-b", { forwardingSite: true, forwardedPointId: "rp-9" }), peer("site-b"))).toBeUndefined();
    expect(await helloRefusal(ctx, hello("new1", "site-d", { forwardingSite: true, generation: 0n }), peer("site-d"))).toBeUndefined();
    expect(await audited()).toEqual([]);
  });

  it("an agent (its own VM's or a new one's) and another site: refused by name and recorded", async () => {
    const { ctx, audited } = await siteC();
    for (const [vmId, identity, source] of [
      ["db1", "agent-db1", "site-a"],
      ["new1", "agent-db1", "site-a"],
      ["web1", "site-d", "site-d"],
    ] as const) {
      const refused = await helloRefusal(ctx, hello(vmId, source, { forwardingSite: true, forwardedPointId: "rp-9" }), peer(identity));
      expect(refused).toMatchObject({ reason: RejectReason.REJECT_REASON_UNAUTHORIZED, message: expect.stringMatching(new RegExp(`'${identity}'.*forwarding_site`)) });
    }
    await ctx.refusals.flush();
    const events = await audited();
    expect(events.map((e) => e.reason)).toEqual(expect.arrayContaining(["FORWARDING_CLAIM_REFUSED"]));
    expect(new Set(events.map((e) => e.identity))).toEqual(new Set(["agent-db1", "site-d"]));
    expect(events.reduce((n, e) => n + Number(e.count), 0)).toBe(3);
  });
});
