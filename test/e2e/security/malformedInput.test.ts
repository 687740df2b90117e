import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RejectReason, ResumeHint } from "../../../src/gen/qreplica/v1/replication.js";
import { StreamEndedError, encodeChunks, msg, type ProtocolClient } from "../../helpers/protocolClient.js";
import { ExpectedDisk, MiB, initialCycle, noise, pattern, startSiteB, type SiteB } from "./siteB.js";

// A site must survive whatever a peer sends: malformed streams end with a clear status, bad
// chunks are refused with their reason, and the process keeps serving correct cycles.

let site: SiteB;
beforeAll(async () => {
  site = await startSiteB("qr-sec-bad-");
});
afterAll(async () => {
  await site?.stop();
});

async function endedWith(c: ProtocolClient): Promise<StreamEndedError> {
  const err = await c.next(20_000).then(
    (r) => {
      throw new Error(`the site answered ${r.body?.$case}`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StreamEndedError);
  return err as StreamEndedError;
}

describe("malformed input on a real site", () => {
  it("ends a stream that does not start with Hello, or sends an empty request, with a clear status", async () => {
    const before = (await site.events()).length;
    const chunk = encodeChunks([{ kind: "data", offset: 0, length: MiB, data: noise(MiB, 1) }], { generation: 1, seq: 1, diskId: "vda" })[0]!;

    const s1 = site.open();
    await s1.send(msg.chunk(chunk));
    const e1 = await endedWith(s1);
    expect([status.INVALID_ARGUMENT, status.FAILED_PRECONDITION]).toContain(e1.status.code);
    expect(e1.status.details).toMatch(/before Hello/);
    expect(e1.status.details).toMatch(/must start with Hello/);

    const s2 = site.open();
    await s2.send({ body: undefined });
    const e2 = await endedWith(s2);
    expect(e2.status.code).toBe(status.INVALID_ARGUMENT);
    expect(e2.status.details).toMatch(/empty ReplicateRequest/);

    // A second Hello on an accepted stream is a protocol error too.
    const s3 = site.open();
    const disk = new ExpectedDisk("vda", 8 * MiB);
    expect((await s3.hello({ vmId: "vm-twice", generation: 0, disks: [disk.spec] })).generation).toBe(1n);
    await s3.send(msg.hello({ vmId: "vm-twice", generation: 1, disks: [disk.spec] }));
    const e3 = await endedWith(s3);
    expect(e3.status.code).toBe(status.FAILED_PRECONDITION);
    expect(e3.status.details).toMatch(/second Hello/);

    // Only the accepted Hello of s3 is in the ledger.
    const added = (await site.events()).slice(before);
    expect(added.map((e) => `${e.stream}:${e.type}`)).toEqual(["replication-vm-twice:ReplicationEnabled"]);
  });

  it("refuses chunks past the announced disk size or above max_chunk_bytes with OUT_OF_RANGE, then serves a correct cycle on a new stream", async () => {
    const VM = "vm-range";
    const disk = new ExpectedDisk("vda", 8 * MiB);
    const c = site.open();
    const ack = await c.hello({ vmId: VM, generation: 0, disks: [disk.spec] });
    expect(ack.maxChunkBytes).toBe(4 * MiB);

    // A chunk ending 512 KiB past the end of the 8 MiB disk, after a valid one.
    const past = encodeChunks(
      [
        { kind: "data", offset: 0, length: MiB, data: pattern(MiB, 0x44) },
        { kind: "data", offset: 8 * MiB - MiB / 2, length: MiB, data: noise(MiB, 3) },
      ],
      { generation: 1, seq: 1, diskId: "vda" },
    );
    await c.sendCycle({ vmId: VM, generation: 1, seq: 1, kind: "initial", disks: [disk.spec] }, past);
    const r1 = await c.expect("chunkRejected");
    expect(r1.reason).toBe(RejectReason.REJECT_REASON_OUT_OF_RANGE);
    expect(r1.diskId).toBe("vda");
    expect(r1.offset).toBe(BigInt(8 * MiB - MiB / 2));
    expect(r1.message).toMatch(/vda/);
    const c1 = await c.expect("cycleRejected");
    expect(c1.reason).toBe(RejectReason.REJECT_REASON_OUT_OF_RANGE);
    expect(c1.cycleSequence).toBe(1n);

    // A zero range starting beyond the end, on the next attempt.
    const zeroPast = encodeChunks([{ kind: "zero", offset: 9 * MiB, length: MiB }], { generation: 1, seq: 2, diskId: "vda" });
    await c.sendCycle({ vmId: VM, generation: 1, seq: 2, kind: "initial", disks: [disk.spec] }, zeroPast);
    expect((await c.expect("chunkRejected")).reason).toBe(RejectReason.REJECT_REASON_OUT_OF_RANGE);
    expect((await c.expect("cycleRejected")).cycleSequence).toBe(2n);

    // A data chunk larger than the max_chunk_bytes the site announced (well within the disk).
    const tooBig = encodeChunks([{ kind: "data", offset: 0, length: 5 * MiB, data: pattern(5 * MiB, 0x55) }], { generation: 1, seq: 3, diskId: "vda" });
    await c.sendCycle({ vmId: VM, generation: 1, seq: 3, kind: "initial", disks: [disk.spec] }, tooBig);
    const r3 = await c.expect("chunkRejected");
    expect(r3.reason).toBe(RejectReason.REJECT_REASON_OUT_OF_RANGE);
    expect(r3.message).toMatch(/max_chunk_bytes/);
    expect((await c.expect("cycleRejected")).cycleSequence).toBe(3n);

    // None of it is visible: no point, no partial or other image.
    expect(site.storageFiles(VM, "vda")).toEqual([]);
    let state = await site.relationship(VM);
    expect(state.points).toEqual([]);
    expect(state.state).toBe("ready-for-initial-replication");
    expect(state.counters.cyclesFailed).toBe(3);
    c.close();

    // The site process is still up and serves a correct cycle on a new stream.
    expect(site.env.daemons[0]!.child.exitCode).toBeNull();
    const d = site.open();
    const again = await d.hello({ vmId: VM, generation: 1, disks: [disk.spec] });
    expect(again.resumeHint).toBe(ResumeHint.RESUME_HINT_INITIAL_REPLICATION);
    const seq = Number(again.lastCommittedCycleSequence) + 1;
    expect(seq).toBe(4);
    expect(await initialCycle(d, { vmId: VM, generation: 1, seq, disk })).toMatchObject({ cycleSequence: 4n, recoveryPointId: "rp-4" });
    state = await site.relationship(VM);
    expect(state.state).toBe("replicating");
    expect((await disk.assertPointIdentical(state.points[0]!.disks[0]!.imagePath, join(site.tmp, "range.raw"))).detail).toMatch(/identical/i);
    expect(site.storageFiles(VM, "vda")).toEqual(["base.qcow2"]);
    expect((await d.finish()).code).toBe(status.OK);
  });
});
