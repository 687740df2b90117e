import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RejectReason, ResumeHint } from "../../../src/gen/qreplica/v1/replication.js";
import { imageInfo } from "../../../src/qemu/processes/index.js";
import type { ExtentPiece } from "../../../src/transport/index.js";
import { encodeChunks, totalsOf, withFlippedChecksum } from "../../helpers/protocolClient.js";
import { ExpectedDisk, MiB, initialCycle, noise, pattern, startSiteB, type SiteB } from "./siteB.js";

// Invariants 1 and 5 against a real site: a corrupted chunk never reaches a recovery point, the
// doomed cycle leaves nothing partial behind, and a retry commits exactly the bytes sent.

let site: SiteB;
beforeAll(async () => {
  site = await startSiteB("qr-sec-chk-");
});
afterAll(async () => {
  await site?.stop();
});

const VM = "vm-integrity";

describe("chunk integrity on a real site", () => {
  it("refuses a chunk with a flipped checksum byte, discards the cycle, and commits the retry byte for byte", async () => {
    const disk = new ExpectedDisk("vda", 8 * MiB);
    const c = site.open();

    const ack = await c.hello({ vmId: VM, generation: 0, disks: [disk.spec] });
    expect(ack.generation).toBe(1n);
    expect(ack.resumeHint).toBe(ResumeHint.RESUME_HINT_INITIAL_REPLICATION);
    expect(ack.lastCommittedCycleSequence).toBe(0n);
    expect(ack.replicaSiteId).toBe("site-b");

    // INITIAL cycle: zstd, raw and zero chunks over the whole 8 MiB disk.
    const first = await initialCycle(c, { vmId: VM, generation: 1, seq: 1, disk });
    expect(first).toMatchObject({ generation: 1n, cycleSequence: 1n, recoveryPointId: "rp-1" });
    let state = await site.relationship(VM);
    expect(state.state).toBe("replicating");
    expect((await disk.assertPointIdentical(state.points[0]!.disks[0]!.imagePath, join(site.tmp, "initial.raw"))).detail).toMatch(/identical/i);

    // INCREMENTAL cycle 2 with the checksum of the chunk at 3 MiB corrupted; sent whole, pipelined.
    const changes = (): ExtentPiece[] => [
      { kind: "data", offset: MiB, length: MiB / 2, data: pattern(MiB / 2, 0x22) },
      { kind: "data", offset: 3 * MiB, length: MiB, data: noise(MiB, 2) },
      { kind: "zero", offset: 6 * MiB, length: MiB / 4 },
      { kind: "data", offset: 7 * MiB, length: MiB, data: pattern(MiB, 0x33) },
    ];
    const good2 = encodeChunks(changes(), { generation: 1, seq: 2, diskId: "vda" });
    const bad2 = good2.map((ch, i) => (i === 1 ? withFlippedChecksum(ch, 7) : ch));
    const eventsBefore = (await site.events(VM)).length;
    await c.sendCycle({ vmId: VM, generation: 1, seq: 2, kind: "incremental", disks: [disk.spec] }, bad2, totalsOf(good2));

    const chunkRejected = await c.expect("chunkRejected");
    expect(chunkRejected.reason).toBe(RejectReason.REJECT_REASON_CHECKSUM_MISMATCH);
    expect(chunkRejected.diskId).toBe("vda");
    expect(chunkRejected.offset).toBe(BigInt(3 * MiB));
    expect(chunkRejected.cycleSequence).toBe(2n);
    expect(chunkRejected.message).toContain(`disk "vda" at offset ${3 * MiB}`);
    expect(chunkRejected.message).toMatch(/SHA-256 mismatch/);
    const cycleRejected = await c.expect("cycleRejected");
    expect(cycleRejected.cycleSequence).toBe(2n);
    expect(cycleRejected.reason).toBe(RejectReason.REJECT_REASON_CHECKSUM_MISMATCH);
    expect(cycleRejected.message).toContain("vda");
    expect(cycleRejected.message).toContain(String(3 * MiB));

    // Nothing of cycle 2 is left in storage or in the catalogue; its failure is on record.
    expect(site.storageFiles(VM, "vda").filter((f) => f.endsWith(".partial"))).toEqual([]);
    expect(site.storageFiles(VM, "vda").sort()).toEqual(["base.qcow2"]);
    state = await site.relationship(VM);
    expect(state.points.map((p) => p.pointId)).toEqual(["rp-1"]);
    const newEvents = (await site.events(VM)).slice(eventsBefore);
    expect(newEvents.map((e) => e.type)).toEqual(["CycleFailed"]);
    expect(newEvents[0]!.data).toMatchObject({ cycleSeq: 2, generation: 1, reason: "REJECT_REASON_CHECKSUM_MISMATCH" });
    expect(newEvents.some((e) => e.type === "CycleCommitted" || e.type === "RecoveryPointCreated")).toBe(false);

    // The retry on the same stream, with a higher sequence and intact chunks, commits.
    disk.apply(changes());
    const good3 = encodeChunks(changes(), { generation: 1, seq: 3, diskId: "vda" });
    await c.sendCycle({ vmId: VM, generation: 1, seq: 3, kind: "incremental", disks: [disk.spec] }, good3);
    const third = await c.expect("cycleAck");
    expect(third).toMatchObject({ generation: 1n, cycleSequence: 3n, recoveryPointId: "rp-3" });
    expect(c.pending()).toEqual([]);

    state = await site.relationship(VM);
    expect(state.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-3"]);
    const image = state.points[1]!.disks[0]!.imagePath;
    // The point is an overlay on the base: compare reads it through the chain.
    expect((await imageInfo(image))["backing-filename"]).toBe("base.qcow2");
    expect((await disk.assertPointIdentical(image, join(site.tmp, "retry.raw"))).detail).toMatch(/identical/i);
    expect(site.storageFiles(VM, "vda").filter((f) => f.endsWith(".partial"))).toEqual([]);

    expect((await c.finish()).code).toBe(status.OK);
  });
});
