import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RejectReason } from "../../../src/gen/qreplica/v1/replication.js";
import { encodeChunks, msg, totalsOf } from "../../helpers/protocolClient.js";
import { ExpectedDisk, MiB, initialCycle, noise, startSiteB, type SiteB } from "./siteB.js";

// Invariant 3 against a real site: the generation fences a primary that is no longer
// authoritative, and a refused message changes nothing but the audit trail.

let site: SiteB;
beforeAll(async () => {
  site = await startSiteB("qr-sec-gen-");
});
afterAll(async () => {
  await site?.stop();
});

const VM = "vm-generation";

describe("stale generations on a real site", () => {
  it("refuses Hello and CycleBegin carrying a generation other than the relationship's", async () => {
    const disk = new ExpectedDisk("vda", 8 * MiB);
    const c = site.open();
    expect((await c.hello({ vmId: VM, generation: 0, disks: [disk.spec] })).generation).toBe(1n);
    expect((await initialCycle(c, { vmId: VM, generation: 1, seq: 1, disk })).cycleSequence).toBe(1n);
    expect((await site.relationship(VM)).generation).toBe(1);

    // New streams presenting generation 0 (a primary that never saw the HelloAck) and 7 (a
    // generation from somewhere else) are refused, and each refusal is on record.
    for (const presented of [0, 7]) {
      const before = (await site.events(VM)).length;
      const s = site.open();
      await s.send(msg.hello({ vmId: VM, generation: presented, disks: [disk.spec] }));
      const rejected = await s.expect("helloRejected");
      expect(rejected.reason).toBe(RejectReason.REJECT_REASON_STALE_GENERATION);
      expect(rejected.currentGeneration).toBe(1n);
      expect(rejected.generation).toBe(BigInt(presented));
      expect(rejected.message).toContain(`generation ${presented} is stale`);
      const st = await s.waitStatus();
      expect(st.code).toBe(status.FAILED_PRECONDITION);
      expect(st.details).toContain("stale");

      const added = (await site.events(VM)).slice(before);
      expect(added.map((e) => e.type)).toEqual(["StaleGenerationRefused"]);
      expect(added[0]!.data).toEqual({ presentedGeneration: presented, currentGeneration: 1, peerIdentity: "agent-a" });
    }
    const state = await site.relationship(VM);
    expect(state.generation).toBe(1);
    expect(state.points.map((p) => p.pointId)).toEqual(["rp-1"]);

    // On the accepted stream (which the refused ones did not disturb), a CycleBegin with a wrong
    // generation is refused, with its chunks and end; nothing reaches storage or the ledger.
    const before = await site.events();
    const wrong = encodeChunks([{ kind: "data", offset: 0, length: MiB, data: noise(MiB, 70) }], { generation: 7, seq: 2, diskId: "vda" });
    await c.sendCycle({ vmId: VM, generation: 7, seq: 2, kind: "incremental", disks: [disk.spec] }, wrong);
    const cycleRejected = await c.expect("cycleRejected");
    expect(cycleRejected.reason).toBe(RejectReason.REJECT_REASON_STALE_GENERATION);
    expect(cycleRejected.cycleSequence).toBe(2n);
    expect(cycleRejected.generation).toBe(1n);
    expect(cycleRejected.message).toMatch(/generation 7/);
    expect((await site.events()).length).toBe(before.length);
    expect(site.storageFiles(VM, "vda")).toEqual(["base.qcow2"]);

    // The same stream then commits cycle 2 at generation 1: the refused one took nothing, not
    // even its sequence number. (Had anything been written, this would be OUT_OF_ORDER.)
    const pieces = disk.apply([{ kind: "data", offset: 2 * MiB, length: MiB, data: noise(MiB, 71) }]);
    const good = encodeChunks(pieces, { generation: 1, seq: 2, diskId: "vda" });
    await c.sendCycle({ vmId: VM, generation: 1, seq: 2, kind: "incremental", disks: [disk.spec] }, good, totalsOf(good));
    expect(await c.expect("cycleAck")).toMatchObject({ generation: 1n, cycleSequence: 2n, recoveryPointId: "rp-2" });
    expect(c.pending()).toEqual([]);

    const after = await site.events();
    const added = after.slice(before.length).map((e) => e.type);
    // Only cycle 2's commit (and whatever retention does after it), no failure for the stale begin.
    expect(added).not.toContain("CycleFailed");
    expect(added).toContain("CycleCommitted");
    const final = await site.relationship(VM);
    expect(final.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-2"]);
    expect(final.counters.cyclesFailed).toBe(0);
    expect((await disk.assertPointIdentical(final.points[1]!.disks[0]!.imagePath, join(site.tmp, "gen.raw"))).detail).toMatch(/identical/i);
    expect(site.storageFiles(VM, "vda").filter((f) => f.endsWith(".partial"))).toEqual([]);
    expect((await c.finish()).code).toBe(status.OK);
  });
});
