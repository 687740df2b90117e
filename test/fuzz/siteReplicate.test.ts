/**
 * The site's data plane (Replicate) fuzzed through real streams over mutual TLS as the authorized
 * agent: Hellos with path tricks in VM and disk ids and extreme sizes, and cycles whose chunks are
 * replayed from earlier cycles, reordered, duplicated, dropped, oversized, out of the disk, of
 * another disk, generation or sequence, with flipped checksums or wrong totals, cut short or
 * aborted. Every stream ends with a clear status; a cycle is acknowledged only when every chunk in
 * it was sound, and then its point is byte-identical to the chunks sent (qemu-img compare);
 * afterwards the site serves a new VM, its kept point is intact and nothing escaped its directory.
 */
import { dialArgs } from "../helpers/controlPlane.js";
import { copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ReplicateRequest, ReplicationServiceService, ResumeHint, type ExtentChunk, type ReplicateResponse } from "../../src/gen/qreplica/v1/replication.js";
import type { ExtentPiece } from "../../src/transport/index.js";
import { StreamEndedError, encodeChunks, msg, totalsOf, withFlippedChecksum, type ProtocolClient } from "../helpers/protocolClient.js";
import { MAX_CHUNK_BYTES } from "../../src/site/dataPlane/openCycle.js";
import { MAX_MESSAGE_BYTES } from "../../src/transport/index.js";
import { ExpectedDisk, MiB, initialCycle, noise, startSiteB, type SiteB } from "../e2e/security/siteB.js";
import { FUZZ_SEED, announceSeed, fuzzParams, fuzzTimeoutMs, hostileIds, type Budget } from "./budget.js";
import { clearStatus, expectKeptPointIntact, expectNoPathEscapes, expectSiteAlive, keptPoint, listTree, type KeptPoint } from "./siteFixture.js";

announceSeed("siteReplicate");
const CI: Budget = { runs: 80, seconds: 12 };
const DISK = 8 * MiB;
const BLOCK = 128 * 1024;
const VMS = ["vm-fuzz-0", "vm-fuzz-1", "vm-fuzz-2"];

let site: SiteB;
let kept: KeptPoint;
let treeBefore: string[];
const models = new Map<string, ExpectedDisk>(VMS.map((v) => [v, new ExpectedDisk("vda", DISK)]));
/** Chunks of earlier runs, replayed into later cycles. */
const sentBefore: Entry[] = [];
let acks = 0;
beforeAll(async () => {
  site = await startSiteB("qr-fuzz-rep-");
  kept = await keptPoint(site, "vm-kept");
  treeBefore = listTree(site.tmp);
}, 120_000);
afterAll(async () => {
  // QR_KEEP=1: the site's log outlives the run (the site's directory does not).
  if (process.env.QR_KEEP && site) copyFileSync(join(site.env.siteB, "site.log"), join(tmpdir(), `qr-fuzz-replicate-${FUZZ_SEED}.log`));
  await site?.stop();
});

// ---- what a run sends ----

/** Up to four non-overlapping pieces, described compactly (a counterexample prints them, not their bytes). */
interface PieceSpec {
  block: number;
  zero: boolean;
  len: number;
  byte: number;
}
const pieces = fc
  .uniqueArray(fc.nat(DISK / BLOCK - 1), { minLength: 1, maxLength: 4 })
  .chain((blocks) =>
    fc.tuple(
      ...blocks.map((block) =>
        fc.record({ block: fc.constant(block), zero: fc.boolean(), len: fc.oneof(fc.constantFrom(BLOCK, 4096, 512), fc.integer({ min: 1, max: BLOCK })), byte: fc.nat(255) }),
      ),
    ),
  );
const materialize = (specs: PieceSpec[]): ExtentPiece[] =>
  specs.map(({ block, zero, len, byte }) =>
    zero
      ? { kind: "zero", offset: block * BLOCK, length: len }
      : { kind: "data", offset: block * BLOCK, length: len, data: Buffer.alloc(len, byte).fill(block & 0xff, 0, Math.min(len, 16)) },
  );

/** What ran, in order: the site carries state from run to run, so a failure's cause may lie in an earlier run. */
const history: string[] = [];
let historyShown = false;
const describeRun = (r: unknown) => JSON.stringify(r, (_k, v: unknown) => (typeof v === "bigint" ? `${v}n` : v instanceof Uint8Array ? Buffer.from(v).toString("hex") : v));

type Op =
  | {
      op: "dup" | "swap" | "drop" | "oversize" | "pastEnd" | "flip" | "otherDisk" | "otherSeq" | "otherGen" | "replay" | "huge" | "pastMessageLimit";
      i: number;
      j: number;
      v: string;
    }
  | { op: "badTotals" | "noEnd" | "abort" | "beginTwice" | "endFirst"; i: number; j: number; v: string };
const ops = fc.array(
  fc.record({
    op: fc.constantFrom(
      "dup",
      "swap",
      "drop",
      "oversize",
      "pastEnd",
      "flip",
      "otherDisk",
      "otherSeq",
      "otherGen",
      "replay",
      "huge",
      "pastMessageLimit",
      "badTotals",
      "noEnd",
      "abort",
      "beginTwice",
      "endFirst",
    ),
    i: fc.nat(9),
    j: fc.nat(9),
    v: hostileIds,
  }) as fc.Arbitrary<Op>,
  { maxLength: 3 },
);

const hostileHello = fc.record({
  vmId: fc.oneof(hostileIds, fc.constantFrom(...VMS)),
  diskId: fc.oneof(hostileIds, fc.constant("vda")),
  size: fc.oneof(fc.constantFrom(0n, 1n, 511n, BigInt(DISK), 2n ** 63n - 1n, 2n ** 64n - 1n, 2n ** 62n), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })),
  generation: fc.oneof(fc.constantFrom(0n, 1n, 2n ** 64n - 1n), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })),
  policyName: fc.oneof(fc.constant(""), hostileIds),
  protocolVersion: fc.oneof(fc.constant(1), fc.nat()),
});

const run = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant("cycle" as const), vm: fc.constantFrom(...VMS), pieces, ops }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("hello" as const), hello: hostileHello }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("raw" as const),
      vm: fc.constantFrom(...VMS),
      frames: fc.array(fc.uint8Array({ maxLength: 64 }), { minLength: 1, maxLength: 3 }),
      helloFirst: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("noHello" as const),
      vm: fc.constantFrom(...VMS),
      pieces,
      order: fc.array(fc.constantFrom("begin", "chunk", "end", "abort", "hello"), { minLength: 1, maxLength: 5 }),
    }),
  },
);

// ---- running it ----

interface Entry {
  chunk: ExtentChunk;
  /** The piece the chunk carries soundly; undefined when it was tampered with. */
  piece: ExtentPiece | undefined;
}

function tamper(entries: Entry[], o: Op, g: bigint, seq: bigint): { entries: Entry[]; flags: Set<string> } {
  const flags = new Set<string>();
  const e = [...entries];
  const i = e.length ? o.i % e.length : 0;
  const j = e.length ? o.j % e.length : 0;
  const at = e[i];
  const bad = (chunk: ExtentChunk) => (e[i] = { chunk, piece: undefined });
  switch (o.op) {
    case "dup":
      if (at) e.splice(j, 0, at);
      break;
    case "swap":
      if (at) [e[i], e[j]] = [e[j]!, at];
      break;
    case "drop":
      if (at) e.splice(i, 1);
      break;
    case "oversize": {
      if (!at) break;
      const length = [2 ** 31, 0xffffffff, at.chunk.length + 1][o.j % 3]!;
      const offset = Number(at.chunk.offset);
      // A longer zero range still inside the disk is sound: it carries no bytes to disagree with.
      if (at.chunk.payload?.$case === "zero" && at.piece && offset + length <= DISK) e[i] = { chunk: { ...at.chunk, length }, piece: { kind: "zero", offset, length } };
      else bad({ ...at.chunk, length });
      break;
    }
    case "pastEnd":
      if (at) bad({ ...at.chunk, offset: [BigInt(DISK - 1), BigInt(DISK), 2n ** 64n - 1n][o.j % 3]! });
      break;
    case "flip":
      if (at?.chunk.payload?.$case === "data") bad(withFlippedChecksum(at.chunk, o.j % at.chunk.checksum.length));
      break;
    case "otherDisk":
      if (at && o.v !== "vda") bad({ ...at.chunk, diskId: o.v });
      break;
    case "otherSeq":
      if (at) bad({ ...at.chunk, cycleSequence: seq + 1n + BigInt(o.j) });
      break;
    case "otherGen":
      if (at) bad({ ...at.chunk, generation: g + 1n + BigInt(o.j) });
      break;
    case "replay": {
      // Chunks name no VM: one of the same generation and sequence (a refused cycle's, retried) is sound.
      const old = sentBefore[o.j % Math.max(1, sentBefore.length)];
      if (old) e.splice(i, 0, { chunk: old.chunk, piece: old.chunk.cycleSequence === seq && old.chunk.generation === g ? old.piece : undefined });
      break;
    }
    case "huge": {
      // Sound in every field but its size: one byte over the site's max_chunk_bytes.
      const [chunk] = encodeChunks([{ kind: "data", offset: 0, length: MAX_CHUNK_BYTES + 1, data: noise(MAX_CHUNK_BYTES + 4, o.j).subarray(0, MAX_CHUNK_BYTES + 1) }], {
        generation: g,
        seq,
        diskId: "vda",
      });
      e.splice(i, 0, { chunk: chunk!, piece: undefined });
      break;
    }
    case "pastMessageLimit": {
      // A message larger than gRPC's receive limit: refused before any site code reads it.
      const length = MAX_MESSAGE_BYTES + 1024;
      const [sound] = encodeChunks([{ kind: "zero", offset: 0, length: 512 }], { generation: g, seq, diskId: "vda" });
      e.splice(i, 0, { chunk: { ...sound!, length, payload: { $case: "data", value: { codec: 0, data: noise(length, o.j) } } }, piece: undefined });
      break;
    }
    default:
      flags.add(o.op);
  }
  return { entries: e, flags };
}

/** Reads responses until the cycle's verdict or the stream's end; returns the verdict's kind. */
async function verdict(c: ProtocolClient): Promise<{ kind: string; response?: ReplicateResponse }> {
  for (;;) {
    let r: ReplicateResponse;
    try {
      r = await c.next(30_000);
    } catch (err) {
      if (err instanceof StreamEndedError) return { kind: "ended" };
      throw err;
    }
    const k = r.body?.$case;
    if (k === "cycleAck" || k === "cycleRejected" || k === "helloRejected") return { kind: k, response: r };
  }
}

async function endClearly(c: ProtocolClient, what: string): Promise<void> {
  const st = await c.finish(30_000);
  const problem = clearStatus(st, what);
  if (problem) throw new Error(problem);
}

type HostileHello = { vmId: string; diskId: string; size: bigint; generation: bigint; policyName: string; protocolVersion: number };

async function hostileHelloRun(h: HostileHello): Promise<void> {
  const c = site.open();
  try {
    const m = msg.hello({ vmId: h.vmId, generation: h.generation, disks: [{ diskId: h.diskId, sizeBytes: 0 }], policyName: h.policyName, protocolVersion: h.protocolVersion });
    if (m.body?.$case === "hello") m.body.value.disks[0]!.virtualSizeBytes = h.size;
    await c.send(m);
    const r = await c.next(30_000).catch((err: unknown) => {
      if (err instanceof StreamEndedError) return undefined;
      throw err;
    });
    expect(["helloAck", "helloRejected", undefined]).toContain(r?.body?.$case);
  } finally {
    await endClearly(c, `Hello ${JSON.stringify(h, (_k, v: unknown) => (typeof v === "bigint" ? `${v}n` : v))}`);
    c.close();
  }
}

/** A Replicate stream carrying `frames` as they are (no protobuf encoding); resolves with its status. */
function rawStream(frames: Buffer[]): Promise<grpc.StatusObject> {
  const client = new grpc.Client(site.address, ...dialArgs(site.address, site.agentA));
  const call = client.makeBidiStreamRequest(
    ReplicationServiceService.replicate.path,
    (b: Buffer) => b,
    (b: Buffer) => b,
    new grpc.Metadata(),
    { deadline: Date.now() + 30_000 },
  );
  call.on("data", () => {});
  call.on("error", () => {});
  const ended = new Promise<grpc.StatusObject>((resolve) => call.on("status", resolve));
  for (const f of frames) call.write(f);
  call.end();
  return ended.finally(() => client.close());
}

async function rawRun(vm: string, frames: Uint8Array[], helloFirst: boolean): Promise<void> {
  const hello = Buffer.from(ReplicateRequest.encode(msg.hello({ vmId: vm, generation: 0, disks: [models.get(vm)!.spec] })).finish());
  const sent = [...(helloFirst ? [hello] : []), ...frames.map((f) => Buffer.from(f))];
  const st = await rawStream(sent);
  const problem = clearStatus(st, `raw frames ${sent.map((b) => b.toString("hex")).join(" ")}`);
  if (problem) throw new Error(problem);
}

/** Messages in an order the protocol does not allow (data before any Hello, a late Hello...). */
async function outOfOrderRun(vm: string, ps: ExtentPiece[], order: string[]): Promise<void> {
  const model = models.get(vm)!;
  const c = site.open();
  try {
    const chunks = encodeChunks(ps, { generation: 1, seq: 1, diskId: "vda" });
    for (const m of order) {
      if (m === "begin") await c.send(msg.cycleBegin({ vmId: vm, generation: 1, seq: 1, kind: "initial", disks: [model.spec] }));
      else if (m === "chunk") for (const ch of chunks) await c.send(msg.chunk(ch));
      else if (m === "end") await c.send(msg.cycleEnd(1, 1, totalsOf(chunks)));
      else if (m === "abort") await c.send(msg.cycleAbort(1, 1));
      else await c.send(msg.hello({ vmId: vm, generation: 0, disks: [model.spec] }));
    }
    c.call.end();
    // Nothing is acknowledged: no cycle can commit before a Hello was accepted, and after one this sends no CycleBegin of its own.
    if (order[0] !== "hello") {
      const v = await verdict(c);
      expect(v.kind).not.toBe("cycleAck");
    }
  } finally {
    await endClearly(c, `messages ${order.join(", ")} on ${vm}`);
    c.close();
  }
}

async function cycleRun(vm: string, ps: ExtentPiece[], opList: Op[]): Promise<void> {
  const model = models.get(vm)!;
  const c = site.open();
  try {
    let ack;
    try {
      ack = await c.hello({ vmId: vm, generation: 0, disks: [model.spec] });
    } catch (err) {
      // A relationship the fuzzing left waiting for the operator may refuse: that is a clear answer too.
      if (err instanceof Error && /expected helloAck, got helloRejected/.test(err.message)) return;
      throw err;
    }
    if (ack.resumeHint === ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR || ack.resumeHint === ResumeHint.RESUME_HINT_RESYNC) return;
    const g = ack.generation;
    const seq = ack.lastCommittedCycleSequence + 1n;
    const kind = ack.resumeHint === ResumeHint.RESUME_HINT_INITIAL_REPLICATION ? "initial" : "incremental";
    let entries: Entry[] = encodeChunks(ps, { generation: g, seq, diskId: "vda" }).map((chunk, k) => ({ chunk, piece: ps[k] }));
    const flags = new Set<string>();
    for (const o of opList) {
      const t = tamper(entries, o, g, seq);
      entries = t.entries;
      for (const f of t.flags) flags.add(f);
    }
    const chunks = entries.map((e) => e.chunk);
    const totals = totalsOf(chunks);
    if (flags.has("badTotals")) totals.extents += 1;
    const begin = { vmId: vm, generation: g, seq, kind: kind as "initial" | "incremental", disks: [model.spec] };
    if (flags.has("endFirst")) await c.send(msg.cycleEnd(g, seq, totals));
    await c.send(msg.cycleBegin(begin));
    if (flags.has("beginTwice")) await c.send(msg.cycleBegin(begin));
    for (const ch of chunks) await c.send(msg.chunk(ch));
    if (flags.has("abort")) await c.send(msg.cycleAbort(g, seq));
    else if (!flags.has("noEnd")) await c.send(msg.cycleEnd(g, seq, totals));
    // Half-close: the site answers whatever it will, then ends the stream (nothing waits on a reply that never comes).
    c.call.end();
    sentBefore.push(...entries.slice(0, 2));
    if (sentBefore.length > 20) sentBefore.splice(0, sentBefore.length - 20);
    const v = await verdict(c);
    if (v.kind === "cycleAck") {
      const sound = entries.every((e) => e.piece !== undefined) && [...flags].every((f) => f === "beginTwice");
      if (!sound) throw new Error(`the site committed a cycle it should have refused: ops ${JSON.stringify(opList)}, flags ${[...flags].join(",")}`);
      for (const e of entries) model.apply([e.piece!]);
      acks++;
      const state = await site.relationship(vm);
      const point = state.points[state.points.length - 1]!;
      const cmp = await model.compareWithPoint(point.disks[0]!.imagePath, join(site.tmp, `${vm}.raw`));
      if (!/identical/i.test(cmp.detail)) throw new Error(`point ${point.pointId} of ${vm} differs from the chunks sent: ${cmp.detail}`);
    }
  } finally {
    await endClearly(c, `cycle on ${vm} with ops ${JSON.stringify(opList)}`);
    c.close();
  }
}

describe("fuzz: the site's Replicate stream", () => {
  it(
    "hostile Hellos and tampered cycles: clear refusals, and only sound cycles commit, byte for byte",
    async () => {
      await fc.assert(
        fc.asyncProperty(run, async (r) => {
          history.push(describeRun(r));
          try {
            if (r.kind === "hello") await hostileHelloRun(r.hello);
            else if (r.kind === "noHello") await outOfOrderRun(r.vm, materialize(r.pieces), r.order);
            else if (r.kind === "raw") await rawRun(r.vm, r.frames, r.helloFirst);
            else await cycleRun(r.vm, materialize(r.pieces), r.ops);
          } catch (err) {
            if (!historyShown)
              console.log(
                `[fuzz] siteReplicate: first failure: ${err instanceof Error ? err.message : String(err)}\nafter these runs (oldest first; later failures while shrinking may follow from this one):\n${history.slice(-12).join("\n")}`,
              );
            historyShown = true;
            throw err;
          }
        }),
        fuzzParams(CI),
      );
      console.log(`[fuzz] siteReplicate: ${acks} cycles committed and compared`);
      expectSiteAlive(site);
    },
    fuzzTimeoutMs(CI),
  );

  it("afterwards: a new VM replicates byte for byte, the kept point is intact, nothing escaped the site", async () => {
    const disk = new ExpectedDisk("vda", DISK);
    const c = site.open();
    const ack = await c.hello({ vmId: "vm-after", generation: 0, disks: [disk.spec] });
    expect((await initialCycle(c, { vmId: "vm-after", generation: Number(ack.generation), seq: 1, disk })).recoveryPointId).toBe("rp-1");
    await c.finish();
    const state = await site.relationship("vm-after");
    expect((await disk.compareWithPoint(state.points[0]!.disks[0]!.imagePath, join(site.tmp, "after.raw"))).detail).toMatch(/identical/i);
    await expectKeptPointIntact(site, kept);
    expectNoPathEscapes(site, treeBefore);
    expectSiteAlive(site);
  });
});

// Findings of this fuzzer, shrunk, kept as literals.
describe("fuzz findings: Replicate", () => {
  it("(guard for the fix below) a newer stream for the VM still ends the older one ABORTED at once", async () => {
    const disk = new ExpectedDisk("vda", DISK);
    const a = site.open();
    const b = site.open();
    try {
      await a.hello({ vmId: "vm-twice", generation: 0, disks: [disk.spec] });
      await b.hello({ vmId: "vm-twice", generation: 0, disks: [disk.spec] });
      const st = await a.waitStatus(10_000);
      expect(grpc.status[st.code]).toBe("ABORTED");
      expect(st.details).toContain("a newer Replicate stream for this VM took over");
      expect((await b.finish()).code).toBe(grpc.status.OK);
    } finally {
      a.close();
      b.close();
    }
  });

  it("a Hello, then bytes that are no protobuf: INVALID_ARGUMENT at once, not a status lost with the HelloAck still being written (the agent waited to its deadline)", async () => {
    const hello = Buffer.from(ReplicateRequest.encode(msg.hello({ vmId: "vm-garbage", generation: 0, disks: [{ diskId: "vda", sizeBytes: DISK }] })).finish());
    for (let i = 0; i < 3; i++) {
      const t0 = Date.now();
      const st = await rawStream([hello, Buffer.from([69])]);
      expect(grpc.status[st.code]).toBe("INVALID_ARGUMENT");
      expect(st.details).toContain("not valid protobuf");
      expect(Date.now() - t0).toBeLessThan(10_000);
    }
  });

  it("a chunk with no cycle open, then a second Hello and a CycleAbort: the stream still ends when the sender half-closes", async () => {
    const disk = new ExpectedDisk("vda", DISK);
    const c = site.open();
    try {
      await c.hello({ vmId: "vm-late-hello", generation: 0, disks: [disk.spec] });
      const [chunk] = encodeChunks([{ kind: "data", offset: 0, length: 4096, data: Buffer.alloc(4096, 40) }], { generation: 1, seq: 1, diskId: "vda" });
      await c.send(msg.chunk(chunk!));
      await c.send(msg.hello({ vmId: "vm-late-hello", generation: 0, disks: [disk.spec] }));
      await c.send(msg.cycleAbort(1, 1));
      const st = await c.finish(30_000);
      expect(clearStatus(st, "the stream")).toBeUndefined();
    } finally {
      c.close();
    }
  });

  it("a first message that is no protobuf (a truncated fixed32) ends the stream INVALID_ARGUMENT, not grpc-js's INTERNAL", async () => {
    const st = await rawStream([Buffer.from([69])]);
    expect(grpc.status[st.code]).toBe("INVALID_ARGUMENT");
    expect(st.details).toMatch(/^a ReplicateRequest that is not valid protobuf/);
  });
});
