/**
 * Extended replication's resync between B and C, the decisions without processes: which chunks
 * differ, what B does with C's HelloAck, when B reports its forwarding lost, and when C (a real
 * Relationships over an in-memory ledger) asks a forwarding site for a resync. The cycle itself
 * runs end to end in test/e2e/extendedResync.test.ts.
 */
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../../src/common/logger.js";
import { ResumeHint, type HelloAck } from "../../../src/gen/qreplica/v1/replication.js";
import { getInMemoryEventStore, loadRelationship, type EventStore } from "../../../src/ledger/index.js";
import { differingRanges, forwardingLost, forwardModeFrom } from "../../../src/site/extension/forwardResync.js";
import { Relationships } from "../../../src/site/relationships/relationships.js";
import { ReplicaStorage, type SiteStorageDaemon } from "../../../src/storage/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";
import { fold, enabled, protect } from "../ledgerDomain/fixtures.js";

const h = (n: number) => Buffer.alloc(32, n);

describe("differingRanges", () => {
  it("joins adjacent differing chunks, counts chunks C has no hash for, and ends at the disk's size", () => {
    const ours = [h(1), h(2), h(3), h(4), h(5)];
    const theirs = [h(1), h(9), h(9), h(4)];
    // 5 chunks of 64 KiB, the last one short (the disk is 4 * 64 KiB + 1000 bytes).
    const size = 4 * 65536 + 1000;
    expect(differingRanges(ours, theirs, 65536, size)).toEqual([
      { offset: 65536, length: 2 * 65536 },
      { offset: 4 * 65536, length: 1000 },
    ]);
    expect(differingRanges(ours, ours, 65536, size)).toEqual([]);
    expect(() => differingRanges(ours.slice(1), theirs, 65536, size)).toThrow(/4 chunks/);
  });
});

describe("forwardModeFrom", () => {
  const ack = (resumeHint: ResumeHint, resyncReason = ""): HelloAck => ({ resumeHint, resyncReason }) as HelloAck;
  const target = { targetSiteId: "site-c", vmId: "vm1", forwardedCount: 2 };
  it("follows C's hint: whole, incremental, resync, or waiting for C's operator", () => {
    expect(forwardModeFrom(ack(ResumeHint.RESUME_HINT_INITIAL_REPLICATION), target)).toBe("full");
    expect(forwardModeFrom(ack(ResumeHint.RESUME_HINT_INCREMENTAL), target)).toBe("incremental");
    expect(forwardModeFrom(ack(ResumeHint.RESUME_HINT_RESYNC, "requested by admin"), target)).toBe("resync");
    expect(forwardModeFrom(ack(ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR, "resync: manual"), target)).toBe("wait");
    expect(() => forwardModeFrom(ack(ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR), target)).toThrow(/paused/);
  });
  it("refuses incrementals onto points it never forwarded (a C too old to ask for a resync)", () => {
    expect(() => forwardModeFrom(ack(ResumeHint.RESUME_HINT_INCREMENTAL), { ...target, forwardedCount: 0 })).toThrow(/did not forward/);
  });
});

describe("forwardingLost", () => {
  it("reports every disk when the last forwarded point is no longer on this site", () => {
    const rel = fold("vm1", enabled);
    expect(forwardingLost(rel, { pointId: "rp-1" }, "site-b")).toEqual([]);
    const withPoint = { ...rel, points: [{ pointId: "rp-5", disks: [{ diskId: "vda" }, { diskId: "vdb" }] }] } as unknown as typeof rel;
    expect(forwardingLost(withPoint, undefined, "site-b")).toEqual([]);
    expect(forwardingLost(withPoint, { pointId: "rp-5" }, "site-b")).toEqual([]);
    const lost = forwardingLost(withPoint, { pointId: "rp-3" }, "site-b");
    expect(lost.map((l) => [l.diskId, l.code])).toEqual([
      ["vda", "FORWARDED_POINT_GONE"],
      ["vdb", "FORWARDED_POINT_GONE"],
    ]);
    expect(lost[0]!.reason).toMatch(/rp-3.*site-b/);
  });
});

describe("C asks a forwarding site for a resync (Hello.forwarded_point_id)", () => {
  let store: EventStore | undefined;
  const dirs: Array<() => void> = [];
  afterEach(async () => {
    await store?.close();
    for (const d of dirs.splice(0)) d();
  });

  async function siteC(): Promise<{ relationships: Relationships; store: EventStore }> {
    store = getInMemoryEventStore();
    // Points rp-1..rp-3 from the primary "agent.site-a.example" (the forwarding site here).
    await protect(store, "vm1", { lastSeq: 3, retention: false });
    const tmp = makeTmpDir("qr-fwd-resync-");
    dirs.push(tmp.cleanup);
    // Hello never touches the storage daemon (seeds are a file beside the chains).
    const storage = new ReplicaStorage(tmp.path, {} as SiteStorageDaemon);
    return { relationships: new Relationships(store, storage, { siteId: "site-c", defaultMaxPoints: 24 }, silentLogger), store };
  }
  const hello = (forwardedPointId: string | undefined) => ({
    vmId: "vm1",
    primarySiteId: "site-b",
    primaryIdentity: "agent.site-a.example",
    presentedGeneration: 1,
    disks: [],
    ...(forwardedPointId === undefined ? {} : { forwardedPointId }),
  });

  it("goes on incrementally while C holds the point B last forwarded, newest or not (a lost ack)", async () => {
    const { relationships } = await siteC();
    expect((await relationships.acceptHello(hello("rp-3"))).resume).toBe("incremental");
    expect((await relationships.acceptHello(hello("rp-2"))).resume).toBe("incremental");
    // An agent names none: nothing changes for it.
    expect((await relationships.acceptHello(hello(undefined))).resume).toBe("incremental");
  });

  it("asks for a resync when C lacks that point (older points restored) and records why", async () => {
    const { relationships, store } = await siteC();
    const accepted = await relationships.acceptHello(hello("rp-7"));
    expect(accepted.resume).toBe("resync");
    expect(accepted.resyncReason).toMatch(/last forwarded point rp-7 .* does not hold \(newest rp-3\)/);
    expect((await loadRelationship(store, "vm1")).state.state).toBe("resync-required");
  });

  it("asks for a resync when B names no forwarded point while C holds points (B forgot)", async () => {
    const { relationships } = await siteC();
    const accepted = await relationships.acceptHello(hello(""));
    expect(accepted.resume).toBe("resync");
    expect(accepted.resyncReason).toMatch(/holds no record of forwarding VM vm1/);
  });
});
