import { afterEach, describe, expect, it } from "vitest";
import {
  NbdClient,
  NbdClosedError,
  NbdCommandError,
  NbdProtocolError,
  NbdReadOnlyError,
  NbdRequestError,
  NbdTimeoutError,
  NbdUnsupportedError,
} from "../../../src/qemu/nbd/index.js";
import {
  DONE,
  FLAGS_RO,
  blockStatusChunk,
  chunk,
  errorChunk,
  noneDone,
  offsetData,
  offsetHole,
  serveHandshake,
  settle,
  simpleReply,
  startFakeServer,
  u32,
  u64,
  type FakeConn,
  type FakeServer,
  type HandshakeScript,
  type NbdRequest,
} from "./fakeServer.js";

const MiB = 1 << 20;
let server: FakeServer | undefined;
let client: NbdClient | undefined;

afterEach(async () => {
  await client?.disconnect();
  client = undefined;
  await server?.close();
  server = undefined;
});

/** A negotiated client whose server runs `script` for the transmission phase. */
async function connected(
  script: (conn: FakeConn) => Promise<void>,
  hs: HandshakeScript = {},
  opts: { requestTimeoutMs?: number; metaContexts?: string[] } = {},
): Promise<NbdClient> {
  server = await startFakeServer(async (conn) => {
    await serveHandshake(conn, { size: 64 * MiB, contexts: { "base:allocation": 0, "qemu:dirty-bitmap:b": 3 }, ...hs });
    await script(conn);
  });
  client = await NbdClient.connect({
    socketPath: server.socketPath,
    exportName: "disk0",
    metaContexts: opts.metaContexts ?? ["base:allocation", "qemu:dirty-bitmap:b"],
    ...(opts.requestTimeoutMs !== undefined ? { requestTimeoutMs: opts.requestTimeoutMs } : {}),
  });
  return client;
}

function pattern(offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = ((offset + i) * 7) % 251;
  return b;
}

async function failureOf(p: Promise<unknown>): Promise<Error> {
  const r = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(r instanceof Error)) throw new Error("expected a rejection");
  return r;
}

describe("NBD transmission: successful replies", () => {
  it("demultiplexes out-of-order, interleaved replies of several in-flight requests", async () => {
    const c = await connected(async (conn) => {
      const reqs: NbdRequest[] = [];
      for (let i = 0; i < 5; i++) reqs.push(await conn.readRequest());
      const [r0, r1, r2, r3, r4] = reqs as [NbdRequest, NbdRequest, NbdRequest, NbdRequest, NbdRequest];
      // r4 (flush) first, then chunks of r2, r0, r1 interleaved, r3 (block status) in the middle.
      conn.write(simpleReply(r4.cookie));
      conn.write(offsetData(r2.cookie, r2.offset + 4096, pattern(r2.offset + 4096, 4096)));
      conn.write(offsetHole(r0.cookie, r0.offset + 8192, 8192));
      conn.write(offsetData(r1.cookie, r1.offset, pattern(r1.offset, r1.length), DONE));
      conn.write(
        blockStatusChunk(r3.cookie, 0, [
          [4096, 0],
          [MiB, 3],
        ]),
      );
      conn.write(offsetData(r0.cookie, r0.offset, pattern(r0.offset, 8192), DONE));
      conn.write(blockStatusChunk(r3.cookie, 3, [[65536, 1]], DONE));
      conn.write(offsetData(r2.cookie, r2.offset, pattern(r2.offset, 4096), DONE));
    });
    const results = await Promise.all([c.read(0, 16384), c.read(MiB, 65536), c.read(2 * MiB, 8192), c.blockStatus("base:allocation", 0, 2 * MiB), c.flush()]);
    const [a, b, d, ext] = results;
    const expectA = pattern(0, 16384);
    expectA.fill(0, 8192);
    expect(a.equals(expectA)).toBe(true);
    expect(b.equals(pattern(MiB, 65536))).toBe(true);
    expect(d.equals(pattern(2 * MiB, 8192))).toBe(true);
    expect(ext).toEqual([
      { offset: 0, length: 4096, flags: 0 },
      { offset: 4096, length: MiB, flags: 3 },
    ]);
    expect(c.inFlight).toBe(0);
  });

  it("parses replies delivered one byte at a time", async () => {
    const c = await connected(async (conn) => {
      const r = await conn.readRequest();
      const reply = Buffer.concat([
        offsetData(r.cookie, r.offset, pattern(r.offset, 300)),
        offsetHole(r.cookie, r.offset + 300, 100),
        offsetData(r.cookie, r.offset + 400, pattern(r.offset + 400, 112), DONE),
      ]);
      await conn.writeSlowly(reply, 1);
    });
    const data = await c.read(1000, 512);
    const expected = pattern(1000, 512);
    expected.fill(0, 300, 400);
    expect(data.equals(expected)).toBe(true);
  });

  it("receives multi-MiB payloads split at arbitrary points, interleaved with other replies", async () => {
    const c = await connected(async (conn) => {
      const a = await conn.readRequest();
      const b = await conn.readRequest();
      const f = await conn.readRequest();
      const stream = Buffer.concat([
        offsetData(a.cookie, a.offset, pattern(a.offset, 3 * MiB + 17)),
        simpleReply(f.cookie),
        offsetData(b.cookie, b.offset, pattern(b.offset, b.length), DONE),
        offsetHole(a.cookie, a.offset + 3 * MiB + 17, 100_000),
        offsetData(a.cookie, a.offset + 3 * MiB + 100_017, pattern(a.offset + 3 * MiB + 100_017, a.length - 3 * MiB - 100_017), DONE),
      ]);
      // Odd-sized writes so headers straddle socket reads and payloads start mid-read.
      for (let i = 0, n = 1; i < stream.length; i += n, n = (n * 7919 + 13) % 300_001 || 1) {
        conn.socket.write(stream.subarray(i, i + n));
        if (i % 3 === 0) await settle(0);
      }
    });
    const [a, b] = await Promise.all([c.read(5 * MiB, 4 * MiB), c.read(20 * MiB, 2 * MiB + 5), c.flush()]);
    const expectA = pattern(5 * MiB, 4 * MiB);
    expectA.fill(0, 3 * MiB + 17, 3 * MiB + 100_017);
    expect(a.equals(expectA)).toBe(true);
    expect(b.equals(pattern(20 * MiB, 2 * MiB + 5))).toBe(true);
  });

  it("reads into a caller-supplied buffer, and refuses one that is too small", async () => {
    const c = await connected(async (conn) => {
      const r = await conn.readRequest();
      conn.write(offsetData(r.cookie, r.offset, pattern(r.offset, r.length), DONE));
    });
    const into = Buffer.alloc(2 * MiB, 0xff);
    const got = await c.read(MiB, MiB, into);
    expect(got.buffer).toBe(into.buffer);
    expect(got.length).toBe(MiB);
    expect(into.subarray(0, MiB).equals(pattern(MiB, MiB))).toBe(true);
    expect(into[MiB]).toBe(0xff); // nothing written past the request
    await expect(c.read(0, 4096, Buffer.alloc(100))).rejects.toBeInstanceOf(NbdRequestError);
  });

  it("keeps many large WRITEs in order under socket backpressure", async () => {
    const seen: NbdRequest[] = [];
    const c = await connected(async (conn) => {
      for (let i = 0; i < 24; i++) {
        const r = await conn.readRequest();
        seen.push(r);
        if (i % 4 === 0) await settle(5); // a slow server: the client's socket buffer fills up
        conn.write(simpleReply(r.cookie));
      }
    });
    const datas = Array.from({ length: 24 }, (_, i) => pattern(i, MiB + i));
    await Promise.all(datas.map((d, i) => c.write(i * 2 * MiB, d)));
    expect(seen.map((r) => r.offset)).toEqual(datas.map((_, i) => i * 2 * MiB));
    seen.forEach((r, i) => expect(r.payload?.equals(datas[i]!)).toBe(true));
  });

  it("works over TCP too", async () => {
    server = await startFakeServer(
      async (conn) => {
        await serveHandshake(conn, { size: MiB });
        const r = await conn.readRequest();
        conn.write(offsetData(r.cookie, r.offset, pattern(r.offset, r.length), DONE));
      },
      { tcp: true },
    );
    client = await NbdClient.connect({ host: "127.0.0.1", port: server.port!, exportName: "x" });
    expect((await client.read(512, 4096)).equals(pattern(512, 4096))).toBe(true);
    await expect(NbdClient.connect({ exportName: "x" })).rejects.toBeInstanceOf(NbdRequestError);
  });

  it("sends WRITE with its payload and FUA, WRITE_ZEROES with NO_HOLE/FAST_ZERO, and accepts simple replies", async () => {
    const seen: NbdRequest[] = [];
    const c = await connected(async (conn) => {
      for (let i = 0; i < 3; i++) {
        const r = await conn.readRequest();
        seen.push(r);
        conn.write(i === 1 ? noneDone(r.cookie) : simpleReply(r.cookie));
      }
    });
    await c.write(4096, pattern(0, 8192), { fua: true });
    await c.writeZeroes(MiB, 4 * MiB, { noHole: true, fastZero: true });
    await c.flush();
    expect(seen.map((r) => [r.type, r.flags, r.offset, r.length])).toEqual([
      [1, 1, 4096, 8192],
      [6, 2 | 16, MiB, 4 * MiB],
      [3, 0, 0, 0],
    ]);
    expect(seen[0]?.payload?.equals(pattern(0, 8192))).toBe(true);
  });

  it("loops BLOCK_STATUS over the range, clipping the last extent and merging equal neighbours", async () => {
    const asked: Array<[number, number]> = [];
    const c = await connected(async (conn) => {
      for (;;) {
        const r = await conn.readRequest();
        if (r.type === 2) return;
        asked.push([r.offset, r.length]);
        // Each reply covers at most 3 MiB in 1 MiB descriptors, alternating flags per MiB index / 2.
        const descs: Array<[number, number]> = [];
        for (let off = r.offset; off < r.offset + Math.min(r.length, 3 * MiB); off += MiB) {
          descs.push([MiB, Math.floor(off / (2 * MiB)) % 2]);
        }
        conn.write(blockStatusChunk(r.cookie, 0, [[r.length, 0]]));
        conn.write(blockStatusChunk(r.cookie, 3, descs, DONE));
      }
    });
    const got = [];
    for await (const e of c.extents("qemu:dirty-bitmap:b", MiB, 7 * MiB + 512)) got.push(e);
    expect(asked).toEqual([
      [MiB, 7 * MiB + 512],
      [4 * MiB, 4 * MiB + 512],
      [7 * MiB, MiB + 512],
    ]);
    expect(got).toEqual([
      { offset: MiB, length: MiB, flags: 0 },
      { offset: 2 * MiB, length: 2 * MiB, flags: 1 },
      { offset: 4 * MiB, length: 2 * MiB, flags: 0 },
      { offset: 6 * MiB, length: 2 * MiB, flags: 1 },
      { offset: 8 * MiB, length: 512, flags: 0 }, // the last descriptor overran the range: clipped
    ]);
  });
});

describe("NBD transmission: server-reported errors", () => {
  it("turns an ERROR chunk into NbdCommandError with errno name and message; the connection stays usable", async () => {
    const c = await connected(async (conn) => {
      const r = await conn.readRequest();
      conn.write(errorChunk(r.cookie, 5, "Input/output error on qcow2 cluster"));
      const r2 = await conn.readRequest();
      conn.write(offsetData(r2.cookie, r2.offset, Buffer.alloc(r2.length, 1), DONE));
    });
    const err = await failureOf(c.read(8192, 4096));
    expect(err).toBeInstanceOf(NbdCommandError);
    const e = err as NbdCommandError;
    expect(e.code).toBe("NBD_COMMAND_FAILED");
    expect(e.errnoName).toBe("EIO");
    expect(e.command).toBe("READ");
    expect(e.offset).toBe(8192);
    expect(e.length).toBe(4096);
    expect(e.serverMessage).toBe("Input/output error on qcow2 cluster");
    expect(e.message).toMatch(/READ of 4096 bytes at offset 8192 failed.*EIO \(5\).*Input\/output error on qcow2 cluster/);
    expect((await c.read(0, 512)).equals(Buffer.alloc(512, 1))).toBe(true);
  });

  it("turns a simple error reply into NbdCommandError", async () => {
    const c = await connected(async (conn) => {
      const r = await conn.readRequest();
      conn.write(simpleReply(r.cookie, 28));
    });
    const err = await failureOf(c.write(0, Buffer.alloc(4096)));
    expect(err).toBeInstanceOf(NbdCommandError);
    expect((err as NbdCommandError).errnoName).toBe("ENOSPC");
    expect(err.message).toMatch(/WRITE of 4096 bytes at offset 0 failed.*ENOSPC \(28\)/);
    expect(c.isClosed).toBe(false);
  });
});

describe("NBD transmission: malformed replies are fatal, never a hang", () => {
  async function expectFatal(reply: (r: NbdRequest) => Buffer, words: RegExp, op: (c: NbdClient) => Promise<unknown> = (c) => c.read(0, 4096)) {
    const c = await connected(async (conn) => {
      const r = await conn.readRequest();
      await conn.readRequest();
      conn.write(reply(r));
    });
    const first = op(c);
    const second = c.read(MiB, 4096);
    const err = await failureOf(first);
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect((err as NbdProtocolError).code).toBe("NBD_PROTOCOL");
    expect(err.message).toMatch(words);
    // Every other pending request fails with the same error, the socket is closed.
    expect(await failureOf(second)).toBe(err);
    await c.closed;
    expect(c.closeError).toBe(err);
    const after = await failureOf(c.read(0, 512));
    expect(after).toBeInstanceOf(NbdClosedError);
    expect(after.cause).toBe(err);
  }

  it("garbage reply magic", () =>
    expectFatal(
      () => Buffer.from("deadbeef0000000000000000000000000000000000", "hex"),
      /NBD reply magic 0xdeadbeef at stream offset \d+ .* is neither simple \(0x67446698\) nor structured \(0x668e33ef\)/,
    ));

  it("structured chunk length 0xffffffff: refused from the header alone, nothing allocated or awaited", () =>
    expectFatal(
      (r) => chunk(r.cookie, DONE, 1, Buffer.alloc(0), 0xffffffff),
      /OFFSET_DATA chunk \(length 4294967295\).*expected 8 bytes of offset plus at most 4096 bytes of data/,
    ));

  it("oversized error chunk length", () => expectFatal((r) => chunk(r.cookie, DONE, 0x8001, Buffer.alloc(0), 0xffffffff), /ERROR chunk.*6 to \d+ bytes/));

  it("OFFSET_DATA outside the requested range", () =>
    expectFatal((r) => offsetData(r.cookie, r.offset + 2048, Buffer.alloc(4096), DONE), /OFFSET_DATA chunk .* covers \[2048, 6144\), outside the requested range \[0, 4096\)/));

  it("overlapping data chunks", () =>
    expectFatal(
      (r) => Buffer.concat([offsetData(r.cookie, 0, Buffer.alloc(2048)), offsetData(r.cookie, 1024, Buffer.alloc(2048), DONE)]),
      /OFFSET_DATA chunk \[1024, 3072\) overlaps data already received/,
    ));

  it("a READ reply that ends before covering the range", () =>
    expectFatal((r) => offsetData(r.cookie, 0, Buffer.alloc(1024), DONE), /ended \(DONE\) with 1024 of 4096 bytes covered/));

  it("unknown cookie", () => expectFatal(() => offsetData(999n, 0, Buffer.alloc(16), DONE), /cookie 999, which matches no request ever sent/));

  it("a reply after DONE", async () => {
    const c = await connected(async (conn) => {
      const r = await conn.readRequest();
      await conn.readRequest();
      conn.write(simpleReply(r.cookie), simpleReply(r.cookie));
    });
    const flushed = c.flush();
    const err = await failureOf(c.read(0, 4096));
    await flushed; // the first reply was fine; only the duplicate is a violation
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect(err.message).toMatch(/cookie 1, whose request already completed \(a reply after DONE\?\)/);
  });

  it("BLOCK_STATUS payload that is not 4 + 8k bytes", () =>
    expectFatal(
      (r) => chunk(r.cookie, DONE, 5, Buffer.concat([u32(0), u32(4096), u32(0), u32(7)]).subarray(0, 14)),
      /BLOCK_STATUS chunk \(length 14\).*4-byte context id plus 1 to \d+ 8-byte descriptors/,
      (c) => c.blockStatus("base:allocation", 0, 4096),
    ));

  it("BLOCK_STATUS for a context id never negotiated", () =>
    expectFatal(
      (r) => blockStatusChunk(r.cookie, 9, [[4096, 0]], DONE),
      /meta context id 9, which was never negotiated/,
      (c) => c.blockStatus("base:allocation", 0, 4096),
    ));

  it("a chunk type that does not belong to the command", () =>
    expectFatal(
      (r) => offsetData(r.cookie, 0, Buffer.alloc(16), DONE),
      /WRITE reply.*OFFSET_DATA chunk.*only READ replies carry data/,
      (c) => c.write(0, Buffer.alloc(16)),
    ));

  it("an unknown chunk type", () => expectFatal((r) => chunk(r.cookie, DONE, 77, Buffer.alloc(4)), /chunk type 77.*unknown/));

  it("an ERROR chunk whose message length does not fit", () =>
    expectFatal(
      (r) => chunk(r.cookie, DONE, 0x8001, Buffer.concat([u32(5), Buffer.from([0x01, 0x00]), Buffer.from("short")])),
      /message length 256 does not fit its 11-byte payload/,
    ));

  it("OFFSET_HOLE outside the range", () => expectFatal((r) => offsetHole(r.cookie, 8192, 4096, DONE), /OFFSET_HOLE chunk .* covers \[8192, 12288\)/));

  it("a simple reply to READ while structured replies were negotiated", () =>
    expectFatal((r) => simpleReply(r.cookie, 0, Buffer.alloc(4096)), /simple reply .* structured replies were negotiated/));

  it("a simple error reply to READ while structured replies were negotiated", () =>
    expectFatal((r) => simpleReply(r.cookie, 5), /READ reply.*simple reply .* structured replies were negotiated/));

  it("a structured reply with an implausible ERROR_OFFSET", () =>
    expectFatal(
      (r) => chunk(r.cookie, DONE, 0x8002, Buffer.concat([u32(5), Buffer.from([0, 0]), u64(1 << 30)])),
      /ERROR_OFFSET chunk points at offset 1073741824, outside the request/,
    ));
});

describe("NBD transmission: closed connections and timeouts", () => {
  it("a READ reply truncated by the server closing mid-payload rejects every pending request", async () => {
    const c = await connected(async (conn) => {
      const r = await conn.readRequest();
      await conn.readRequest();
      const full = offsetData(r.cookie, r.offset, Buffer.alloc(4096, 9), DONE);
      conn.socket.end(full.subarray(0, 20 + 8 + 1000));
    });
    const first = c.read(0, 4096);
    const second = c.read(MiB, 4096);
    const err = await failureOf(first);
    expect(err).toBeInstanceOf(NbdClosedError);
    expect((err as NbdClosedError).code).toBe("NBD_CLOSED");
    expect(err.message).toMatch(new RegExp(`NBD connection to ${server!.socketPath} closed after 1000 of 4096 bytes of a READ reply .*2 requests awaiting`));
    const err2 = await failureOf(second);
    expect(err2).toBeInstanceOf(NbdClosedError);
    await c.closed;
    expect(c.isClosed).toBe(true);
  });

  it("a request without a reply times out, and the connection is torn down", async () => {
    const c = await connected(
      async (conn) => {
        await conn.readRequest();
        await conn.readRequest();
      },
      {},
      { requestTimeoutMs: 150 },
    );
    const first = c.read(0, 4096);
    await settle(50);
    const second = c.flush();
    const err = await failureOf(first);
    expect(err).toBeInstanceOf(NbdTimeoutError);
    expect((err as NbdTimeoutError).code).toBe("NBD_TIMEOUT");
    expect(err.message).toMatch(/READ of 4096 bytes at offset 0 .* no reply within 150 ms; closing the connection/);
    const err2 = await failureOf(second);
    expect(err2).toBeInstanceOf(NbdClosedError);
    expect(err2.cause).toBe(err);
    await c.closed;
  });

  it("disconnect sends NBD_CMD_DISC, rejects pending requests and is idempotent", async () => {
    let sawDisc = false;
    const c = await connected(async (conn) => {
      await conn.readRequest();
      const r = await conn.readRequest();
      sawDisc = r.type === 2;
      conn.socket.end();
    });
    const pending = c.read(0, 4096);
    await settle();
    const d1 = c.disconnect();
    const d2 = c.disconnect();
    const err = await failureOf(pending);
    expect(err).toBeInstanceOf(NbdClosedError);
    expect(err.message).toMatch(/disconnected by the client/);
    await Promise.all([d1, d2]);
    expect(sawDisc).toBe(true);
    expect(c.closeError).toBeUndefined();
    expect(await failureOf(c.read(0, 512))).toBeInstanceOf(NbdClosedError);
    await c.disconnect();
  });
  it("never writes into a caller's buffer once its read was rejected by disconnect()", async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const c = await connected(async (conn) => {
      const r = await conn.readRequest();
      // Half the payload now (so the client is mid-reply, reading straight into `into`), the rest
      // after the client has disconnected.
      const full = offsetData(r.cookie, r.offset, Buffer.alloc(r.length, 0xab), DONE);
      conn.write(full.subarray(0, 28 + 512 * 1024));
      await gate;
      conn.write(full.subarray(28 + 512 * 1024));
    });
    const into = Buffer.alloc(2 * MiB, 0x00);
    const pending = c.read(0, 2 * MiB, into);
    while (into[512 * 1024 - 1] !== 0xab) await settle(5);
    const done = c.disconnect();
    expect(await failureOf(pending)).toBeInstanceOf(NbdClosedError);
    into.fill(0x11); // the caller reuses its buffer right away
    release();
    await done;
    await settle(50);
    expect(into.equals(Buffer.alloc(2 * MiB, 0x11))).toBe(true);
  });
});

describe("NBD transmission: caller errors are refused without sending", () => {
  it("validates ranges, sizes, read-only exports and unadvertised features", async () => {
    let requests = 0;
    const c = await connected(
      async (conn) => {
        for (;;) {
          await conn.readRequest();
          requests++;
        }
      },
      { flags: FLAGS_RO, blockSize: [512, 4096, 32 * MiB] },
    );
    const cases: Array<[Promise<unknown>, new (...a: never[]) => Error, RegExp]> = [
      [c.read(0, 32 * MiB + 512), NbdRequestError, /33554944 bytes .* exceeds the 33554432-byte limit.*maxRequestBytes/],
      [c.read(64 * MiB - 512, 1024), NbdRequestError, /runs past the end of export "disk0" \(size 67108864\)/],
      [c.read(100, 512), NbdRequestError, /not aligned to the export's minimum block size 512/],
      [c.read(-1, 512), NbdRequestError, /non-negative integers/],
      [c.write(0, Buffer.alloc(512)), NbdReadOnlyError, /read-only; refusing to send WRITE/],
      [c.writeZeroes(0, 512), NbdReadOnlyError, /read-only; refusing to send WRITE_ZEROES/],
      [c.blockStatus("qemu:dirty-bitmap:other", 0, 512), NbdUnsupportedError, /not negotiated/],
      [c.blockStatus("base:allocation", 64 * MiB, 512), NbdRequestError, /outside the export/],
    ];
    for (const [p, cls, words] of cases) {
      const err = await failureOf(p);
      expect(err).toBeInstanceOf(cls);
      expect(err.message).toMatch(words);
    }
    await settle();
    expect(requests).toBe(0);
    expect(c.isClosed).toBe(false);
  });

  it("refuses FLUSH, WRITE_ZEROES and FUA the export does not advertise", async () => {
    const c = await connected(async () => {}, { flags: 0x1 });
    await expect(c.flush()).rejects.toThrow(/does not support FLUSH/);
    await expect(c.writeZeroes(0, 512)).rejects.toThrow(/does not support WRITE_ZEROES/);
    await expect(c.write(0, Buffer.alloc(512), { fua: true })).rejects.toBeInstanceOf(NbdUnsupportedError);
  });
});
