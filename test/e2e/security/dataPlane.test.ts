import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RejectReason, ResumeHint } from "../../../src/gen/qreplica/v1/replication.js";
import { imageInfo } from "../../../src/qemu/processes/index.js";
import type { ExtentPiece } from "../../../src/transport/index.js";
import { StreamEndedError, encodeChunks, msg, totalsOf, withFlippedChecksum, type ProtocolClient } from "../../helpers/protocolClient.js";
import { waitFor } from "../../helpers/processes.js";
import { ExpectedDisk, MiB, initialCycle, noise, pattern, startSiteB, type SiteB } from "./siteB.js";

// The data plane of a real `qreplica site serve` (site B) driven by a hand-made agent-a client
// over mutual TLS: corrupted chunks never reach a recovery point and leave nothing partial
// (invariants 1 and 5), stale generations are fenced (invariant 3), and malformed streams end
// with a clear status while the process keeps serving. One site for the whole file; each part
// uses its own VM, so their ledgers and storage do not meet.

let site: SiteB;
beforeAll(async () => {
  site = await startSiteB("qr-sec-dp-");
});
afterAll(async () => {
  await site?.stop();
});

/** The point's files once its chunk hash index (written after the commit, in the background) is there. */
async function indexWritten(vmId: string, diskId: string): Promise<string[]> {
  return waitFor("the newest point's chunk hash index", () => {
    const files = site.storageFiles(vmId, diskId).sort();
    return files.some((f) => f.endsWith(".chunks")) ? files : undefined;
  });
}

describe("chunk integrity (invariants 1 and 5)", () => {
  const VM = "vm-integrity";

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
    expect((await disk.compareWithPoint(state.points[0]!.disks[0]!.imagePath, join(site.tmp, "initial.raw"))).detail).toMatch(/identical/i);

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
    // Point 1's image and its chunk hash index; nothing of cycle 2.
    expect(await indexWritten(VM, "vda")).toEqual(["base.qcow2", "rp-00000001.chunks"]);
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
    expect((await disk.compareWithPoint(image, join(site.tmp, "retry.raw"))).detail).toMatch(/identical/i);
    expect(site.storageFiles(VM, "vda").filter((f) => f.endsWith(".partial"))).toEqual([]);

    expect((await c.finish()).code).toBe(status.OK);
  });
});

describe("stale generations (invariant 3: the generation fences an old primary)", () => {
  const VM = "vm-generation";

  it("refuses Hello and CycleBegin carrying a generation other than the relationship's", async () => {
    const disk = new ExpectedDisk("vda", 8 * MiB);
    const c = site.open();
    expect((await c.hello({ vmId: VM, generation: 0, disks: [disk.spec] })).generation).toBe(1n);
    expect((await initialCycle(c, { vmId: VM, generation: 1, seq: 1, disk })).cycleSequence).toBe(1n);
    expect((await site.relationship(VM)).generation).toBe(1);

    // A new stream presenting generation 7 (a generation from somewhere else) is refused, and the
    // refusal is on record. (Generation 0 from this primary is recognised: see the end of this test.)
    for (const presented of [7]) {
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
    expect(await indexWritten(VM, "vda")).toEqual(["base.qcow2", "rp-00000001.chunks"]);

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
    expect((await disk.compareWithPoint(final.points[1]!.disks[0]!.imagePath, join(site.tmp, "gen.raw"))).detail).toMatch(/identical/i);
    expect(site.storageFiles(VM, "vda").filter((f) => f.endsWith(".partial"))).toEqual([]);
    expect((await c.finish()).code).toBe(status.OK);

    // Generation 0 from the relationship's own primary with no failover in between (its agent
    // lost its state, or never saw the HelloAck) is not stale: it is told the current generation.
    const lost = site.open();
    const beforeLost = (await site.events(VM)).length;
    expect((await lost.hello({ vmId: VM, generation: 0, disks: [disk.spec] })).generation).toBe(1n);
    const acknowledged = (await site.events(VM)).slice(beforeLost);
    expect(acknowledged.map((e) => e.type)).toEqual(["GenerationAcknowledged"]);
    expect(acknowledged[0]!.data).toEqual({ peerIdentity: "agent-a", presentedGeneration: 0, generation: 1 });
    expect((await lost.finish()).code).toBe(status.OK);
  });
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

describe("malformed input", () => {
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
    expect((await disk.compareWithPoint(state.points[0]!.disks[0]!.imagePath, join(site.tmp, "range.raw"))).detail).toMatch(/identical/i);
    expect(await indexWritten(VM, "vda")).toEqual(["base.qcow2", "rp-00000004.chunks"]);
    expect((await d.finish()).code).toBe(status.OK);
  });
});

describe("CycleSkipped (a due cycle the primary did not start)", () => {
  const VM = "vm-skipped";

  it("a report of another generation touches nothing; the current generation's is recorded once however often it repeats, and a commit clears it", async () => {
    const disk = new ExpectedDisk("vda", 8 * MiB);
    const c = site.open();
    expect((await c.hello({ vmId: VM, generation: 0, disks: [disk.spec] })).generation).toBe(1n);
    await initialCycle(c, { vmId: VM, generation: 1, seq: 1, disk });
    const skipped = (generation: bigint, message: string) => ({
      body: { $case: "cycleSkipped" as const, value: { generation, code: "SCRATCH_SPACE_LOW", message, skippedAt: new Date() } },
    });
    // The stream is handled in order: once the last report is in the ledger, the others were handled.
    await c.send(skipped(7n, "stale: from a primary of generation 7"));
    for (let i = 0; i < 5; i++) await c.send(skipped(1n, `scratch /s has ${i} MiB free`));
    const recorded = await waitFor(
      "the CycleSkipped event",
      async () => {
        const events = (await site.events(VM)).filter((e) => e.type === "CycleSkipped");
        return events.length ? events : undefined;
      },
      30_000,
    );
    expect(recorded).toHaveLength(1);
    expect(recorded[0]!.data).toMatchObject({ generation: 1, code: "SCRATCH_SPACE_LOW", message: "scratch /s has 0 MiB free" });
    // The stream stays open and the next cycle commits, which ends the condition.
    const next = new ExpectedDisk("vda", 8 * MiB);
    const chunks = encodeChunks([{ kind: "data", offset: 0, length: MiB, data: pattern(MiB, 0x44) }], { generation: 1, seq: 2, diskId: "vda" });
    await c.sendCycle({ vmId: VM, generation: 1, seq: 2, kind: "incremental", disks: [next.spec] }, chunks, totalsOf(chunks));
    expect((await c.expect("cycleAck")).cycleSequence).toBe(2n);
    expect((await site.relationship(VM)).cycleSkipped).toBeUndefined();
    expect((await site.events(VM)).filter((e) => e.type === "CycleSkipped")).toHaveLength(1);
    expect((await c.finish()).code).toBe(status.OK);
  });
});
