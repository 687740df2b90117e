/**
 * Hostile peers for the readers of QEMU's protocols: a QMP monitor, a guest agent and an NBD server
 * that answer with fuzzed bytes (near-valid frames, hostile JSON, noise, split at random points)
 * and then hang up. Whatever they send, every call of the client settles in bounded time with a
 * result or a typed QreplicaError, and nothing is thrown out of a socket handler (which would kill
 * the agent process).
 */
import net from "node:net";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { QreplicaError } from "../../src/common/errors.js";
import { makeTmpDir } from "../../src/common/tmpDir.js";
import { GuestAgentClient } from "../../src/qemu/guestAgent/index.js";
import { NbdClient } from "../../src/qemu/nbd/index.js";
import { QmpClient } from "../../src/qemu/qmp/index.js";
import {
  DONE,
  blockStatusChunk,
  chunk,
  errorChunk,
  greeting,
  infoExport,
  noneDone,
  offsetData,
  offsetHole,
  optionReply,
  serveHandshake,
  simpleReply,
  startFakeServer,
  u32,
  type FakeServer,
} from "../unit/nbd/fakeServer.js";
import { PROTO_KEYS, announceSeed, fuzzParams, fuzzTimeoutMs, hostileValue, type Budget } from "./budget.js";

announceSeed("protocolReaders");
const tmp = makeTmpDir("qr-fuzz-proto-");
const CI: Budget = { runs: 500, seconds: 4 };
/** Every client call must settle within this; the clients' own timeouts are set well below it. */
const SETTLE_MS = 8_000;

// Anything thrown from an event handler of a socket lands here; in the agent it would end the process.
const uncaught: unknown[] = [];
const onUncaught = (err: unknown) => uncaught.push(err);
beforeAll(() => {
  process.on("uncaughtException", onUncaught);
});
afterAll(() => {
  process.off("uncaughtException", onUncaught);
  tmp.cleanup();
});
afterEach(() => expect(uncaught).toEqual([]));

/** Waits for `p` at most SETTLE_MS; returns its error (a QreplicaError) or undefined. */
async function settles(what: string, p: Promise<unknown>): Promise<QreplicaError | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<"hang">((r) => (timer = setTimeout(() => r("hang"), SETTLE_MS)));
  const r = await Promise.race([
    p.then(
      () => "ok" as const,
      (e: unknown) => ({ e }),
    ),
    hang,
  ]);
  clearTimeout(timer);
  if (r === "hang") throw new Error(`${what} did not settle within ${SETTLE_MS} ms`);
  if (r === "ok") return undefined;
  if (!(r.e instanceof QreplicaError))
    throw new Error(`${what} failed with an untyped error: ${r.e instanceof Error ? `${r.e.name}: ${r.e.message}` : String(r.e)}`, { cause: r.e });
  return r.e;
}

function checkUncaught(): void {
  if (uncaught.length) {
    const e = uncaught.splice(0)[0];
    throw new Error(`thrown out of a socket handler: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`, { cause: e });
  }
}

/** Bytes split into 1-5 writes at arbitrary points. */
const pieces = (bytes: fc.Arbitrary<Buffer>) =>
  bytes.chain((b) =>
    fc.uniqueArray(fc.nat({ max: Math.max(0, b.length) }), { maxLength: 4 }).map((cuts) => {
      const at = [0, ...cuts.sort((x, y) => x - y), b.length];
      return at.slice(1).map((end, i) => b.subarray(at[i], end));
    }),
  );

/** A unix-socket server whose connections are handled by whatever the current run sets. */
async function scriptedServer(name: string): Promise<{ path: string; handler: { current: (s: net.Socket) => void }; close(): Promise<void> }> {
  const path = join(tmp.path, `${name}.sock`);
  const handler = { current: (s: net.Socket) => void s.destroy() };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
    handler.current(s);
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    path,
    handler,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

async function writeThenEnd(s: net.Socket, parts: Buffer[]): Promise<void> {
  for (const p of parts) {
    if (s.destroyed) return;
    s.write(p);
    await new Promise((r) => setImmediate(r));
  }
  s.end();
}

/** Lines of (mostly) JSON a hostile QMP monitor or guest agent could send; `ids` are the ids in flight. */
function hostileJsonLines(ids: string[]): fc.Arbitrary<Buffer> {
  const idArb = ids.length ? fc.oneof(fc.constantFrom(...ids), hostileValue) : hostileValue;
  const message = fc.oneof(
    fc.record({ return: hostileValue, id: idArb }, { requiredKeys: [] }),
    fc.record({ error: fc.oneof(hostileValue, fc.record({ class: hostileValue, desc: hostileValue }, { requiredKeys: [] })), id: idArb }, { requiredKeys: [] }),
    fc.record(
      { event: fc.oneof(fc.constantFrom("error", "close", "*", "STOP", "newListener", ...PROTO_KEYS), fc.string()), data: hostileValue, timestamp: hostileValue },
      { requiredKeys: [] },
    ),
    hostileValue,
  );
  const line = fc.oneof(
    { weight: 5, arbitrary: message.map((m) => Buffer.from(`${JSON.stringify(m) ?? "null"}\n`)) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)) },
    { weight: 1, arbitrary: fc.constantFrom(Buffer.from("\n"), Buffer.from([0xff]), Buffer.from('{"return": {}, "id": ')) },
  );
  return fc.array(line, { minLength: 1, maxLength: 6 }).map((ls) => Buffer.concat(ls));
}

describe("fuzz: QMP reader", () => {
  let srv: Awaited<ReturnType<typeof scriptedServer>>;
  beforeAll(async () => (srv = await scriptedServer("qmp")));
  afterAll(() => srv.close());

  const GREETING = Buffer.from(`${JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: "" }, capabilities: [] } })}\n`);
  const greetings = fc.oneof(
    { weight: 4, arbitrary: fc.constant(GREETING) },
    { weight: 1, arbitrary: fc.record({ QMP: hostileValue }).map((g) => Buffer.from(`${JSON.stringify(g)}\n`)) },
    { weight: 1, arbitrary: hostileJsonLines([]) },
  );

  it(
    "a monitor sending anything: connect and execute settle with a result or a typed error",
    async () => {
      await fc.assert(
        fc.asyncProperty(greetings, fc.boolean(), pieces(hostileJsonLines(["q1", "q2", "q3"])), async (greet, capsOk, reply) => {
          srv.handler.current = (s) => {
            s.write(greet);
            let lines = 0;
            s.on("data", (d: Buffer) => {
              for (const b of d) if (b === 0x0a) lines++;
              if (lines === 1 && capsOk) s.write('{"return": {}, "id": "q1"}\n');
              if (lines === (capsOk ? 2 : 1)) void writeThenEnd(s, reply);
            });
          };
          let client: QmpClient | undefined;
          const connectErr = await settles(
            "QMP connect",
            QmpClient.connect({ socketPath: srv.path, connectTimeoutMs: 2000, commandTimeoutMs: 2000 }).then((c) => (client = c)),
          );
          if (client) {
            const err = await settles("QMP execute", client.execute("query-status"));
            // A line that is not JSON closes the monitor; a well-formed reply of the wrong shape fails only its command.
            if (err?.code === "QMP_PROTOCOL" && client.isClosed) {
              expect((await settles("QMP execute after the error", client.execute("query-status")))?.code).toBe("QMP_CLOSED");
            }
            await settles("QMP close", client.close());
          } else {
            expect(connectErr).toBeDefined();
          }
          checkUncaught();
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );
});

describe("fuzz: guest-agent framing", () => {
  let srv: Awaited<ReturnType<typeof scriptedServer>>;
  beforeAll(async () => (srv = await scriptedServer("qga")));
  afterAll(() => srv.close());

  it(
    "an agent sending anything: execute settles with a result or a typed error",
    async () => {
      await fc.assert(
        fc.asyncProperty(fc.boolean(), pieces(hostileJsonLines(["qr1", "qr2"])), async (syncOk, reply) => {
          srv.handler.current = (s) => {
            let buf = "";
            let synced = false;
            s.on("data", (d: Buffer) => {
              buf += d.toString("latin1");
              const m = /"guest-sync-delimited","arguments":\{"id":(\d+)\}\}\n/.exec(buf);
              if (!synced && m) {
                synced = true;
                buf = buf.slice(m.index + m[0].length);
                if (syncOk) s.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(`{"return": ${m[1]}}\n`)]));
                else return void writeThenEnd(s, reply);
              }
              if (synced && buf.includes("\n")) void writeThenEnd(s, reply);
            });
          };
          const qga = new GuestAgentClient({ socketPath: srv.path, connectTimeoutMs: 2000, syncTimeoutMs: 2000, commandTimeoutMs: 2000, maxLineBytes: 256 });
          try {
            await settles("QGA execute", qga.execute("guest-ping"));
            await settles("QGA fsfreeze-status", qga.fsfreezeStatus());
          } finally {
            qga.close();
          }
          checkUncaught();
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );
});

describe("fuzz: NBD reply parser", () => {
  const MiB = 1 << 20;
  let script: (conn: Parameters<Parameters<typeof startFakeServer>[0]>[0]) => Promise<void> = async () => {};
  let server: FakeServer;
  beforeAll(async () => (server = await startFakeServer((conn) => script(conn))));
  afterAll(() => server.close());

  const u64 = (n: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(n);
    return b;
  };
  /** A cookie of a request in flight (by index) or any 64-bit value. */
  const cookieSel = fc.oneof(fc.nat(1), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }));
  const pick = (ck: bigint[], sel: number | bigint) => (typeof sel === "number" ? ck[sel]! : sel);
  const small = fc.oneof(fc.nat({ max: 8192 }), fc.constantFrom(0, 4096, MiB, 0xffffffff, 0x7fffffff));
  type Frame = ((ck: bigint[]) => Buffer) & { [fc.toStringMethod](): string };
  const frame = <A extends unknown[]>(name: string, args: fc.Arbitrary<A>, build: (ck: bigint[], ...a: A) => Buffer): fc.Arbitrary<Frame> =>
    args.map((a) => Object.assign((ck: bigint[]) => build(ck, ...a), { [fc.toStringMethod]: () => `${name}(${fc.stringify(a)})` }));
  /** Structured and simple reply frames for the requests in flight, valid-looking or not. */
  const replies = fc.oneof(
    frame("offsetData", fc.tuple(cookieSel, small, fc.nat({ max: 600 }), fc.nat(3)), (ck, c, off, len, f) => offsetData(pick(ck, c), off, Buffer.alloc(len, 7), f)),
    frame("offsetHole", fc.tuple(cookieSel, small, small, fc.nat(3)), (ck, c, off, len, f) => offsetHole(pick(ck, c), off, len, f)),
    frame("blockStatus", fc.tuple(cookieSel, fc.nat(4), fc.array(fc.tuple(small, fc.nat(3)), { maxLength: 5 }), fc.nat(3)), (ck, c, id, d, f) =>
      blockStatusChunk(pick(ck, c), id, d, f),
    ),
    frame("errorChunk", fc.tuple(cookieSel, fc.nat(200), fc.string({ maxLength: 40 }), fc.constantFrom(0, DONE)), (ck, c, e, m, f) => errorChunk(pick(ck, c), e, m, f)),
    frame("noneDone", fc.tuple(cookieSel), (ck, c) => noneDone(pick(ck, c))),
    frame("chunk", fc.tuple(cookieSel, fc.nat(0xffff), fc.nat(0xffff), fc.uint8Array({ maxLength: 40 }), fc.option(small)), (ck, c, f, t, p, len) =>
      chunk(pick(ck, c), f, t, Buffer.from(p), len ?? undefined),
    ),
    frame("simpleReply", fc.tuple(cookieSel, fc.nat(200), fc.uint8Array({ maxLength: 64 })), (ck, c, e, p) => simpleReply(pick(ck, c), e, Buffer.from(p))),
    frame("bytes", fc.tuple(fc.uint8Array({ maxLength: 32 })), (_ck, a) => Buffer.from(a)),
  );

  it(
    "a server answering requests with anything: every request settles, the connection fails cleanly",
    async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(replies, { minLength: 1, maxLength: 8 }), fc.nat(36), async (frames, step) => {
          script = async (conn) => {
            await serveHandshake(conn, { size: 64 * MiB, contexts: { "base:allocation": 0, "qemu:dirty-bitmap:b": 3 } });
            const a = await conn.readRequest();
            const b = await conn.readRequest();
            await conn.writeSlowly(Buffer.concat(frames.map((f) => f([a.cookie, b.cookie]))), 1 + step);
            conn.socket.end();
          };
          const client = await NbdClient.connect({
            socketPath: server.socketPath,
            exportName: "disk0",
            metaContexts: ["base:allocation", "qemu:dirty-bitmap:b"],
            requestTimeoutMs: 3000,
          });
          try {
            const errs = await Promise.all([settles("NBD read", client.read(0, 4096)), settles("NBD block status", client.blockStatus("qemu:dirty-bitmap:b", 0, MiB))]);
            // A protocol error leaves nothing half-parsed behind: the connection is closed, later calls fail at once.
            if (errs.some((e) => e?.code === "NBD_PROTOCOL")) {
              await settles("NBD closed", client.closed);
              expect((await settles("NBD read after the error", client.read(0, 512)))?.code).toBe("NBD_CLOSED");
            }
          } finally {
            await settles("NBD disconnect", client.disconnect());
          }
          checkUncaught();
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );

  const handshakeFrames = fc.array(
    fc.oneof(
      fc.constant(greeting()),
      fc.nat(0xffff).map((f) => greeting(f)),
      fc
        .tuple(fc.constantFrom(7, 8, 10, 99), fc.constantFrom(1, 3, 4, 0x80000001, 0x80000006, 42), fc.uint8Array({ maxLength: 40 }))
        .map(([o, t, d]) => optionReply(o, t, Buffer.from(d))),
      fc.tuple(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.nat(0xffff)).map(([size, flags]) => optionReply(7, 3, infoExport(size, flags))),
      fc.tuple(fc.nat(10), fc.string({ maxLength: 30 })).map(([id, name]) => optionReply(10, 4, Buffer.concat([u32(id), Buffer.from(name)]))),
      fc.uint8Array({ maxLength: 24 }).map((a) => Buffer.from(a)),
      fc.constant(u64(0x4e42444d41474943n)),
    ),
    { minLength: 1, maxLength: 8 },
  );

  it(
    "a server negotiating with anything: connect settles with a client or a typed error",
    async () => {
      await fc.assert(
        fc.asyncProperty(handshakeFrames, fc.nat(16), async (frames, step) => {
          script = async (conn) => {
            await conn.writeSlowly(Buffer.concat(frames), 1 + step);
            conn.socket.end();
          };
          let client: NbdClient | undefined;
          await settles(
            "NBD connect",
            NbdClient.connect({ socketPath: server.socketPath, exportName: "disk0", metaContexts: ["base:allocation"], connectTimeoutMs: 3000 }).then((c) => (client = c)),
          );
          if (client) await settles("NBD disconnect", client.disconnect());
          checkUncaught();
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );
});

// Findings of these fuzzers, shrunk, kept as literals.
describe("fuzz findings: QMP and guest-agent readers", () => {
  let srv: Awaited<ReturnType<typeof scriptedServer>>;
  beforeAll(async () => (srv = await scriptedServer("findings")));
  afterAll(() => srv.close());
  const GREETING = `${JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: "" }, capabilities: [] } })}\n`;

  /** A monitor that greets, accepts qmp_capabilities and answers the next command with `reply`. */
  const monitor = (reply: string, greeting = GREETING) => {
    srv.handler.current = (s) => {
      s.write(greeting);
      let lines = 0;
      s.on("data", (d: Buffer) => {
        for (const b of d) if (b === 0x0a) lines++;
        if (lines === 1) s.write('{"return": {}, "id": "q1"}\n');
        if (lines === 2) s.write(reply);
      });
    };
  };

  it("QMP: a line holding JSON null (or an array) is a QmpProtocolError, not a TypeError thrown from the socket handler", async () => {
    for (const line of ["null\n", "[1]\n", "7\n"]) {
      monitor(line);
      const qmp = await QmpClient.connect({ socketPath: srv.path, commandTimeoutMs: 5000 });
      const err = await settles("execute", qmp.execute("query-status"));
      expect(err?.code).toBe("QMP_PROTOCOL");
      expect(err?.message).toMatch(/not a JSON object/);
      checkUncaught();
    }
  });

  it("QMP: an event named 'error' or 'close' is refused as a protocol error instead of throwing or faking a close", async () => {
    for (const name of ["error", "close"]) {
      monitor(`{"event": "${name}", "data": {}}\n`);
      const qmp = await QmpClient.connect({ socketPath: srv.path, commandTimeoutMs: 5000 });
      const err = await settles("execute", qmp.execute("query-status"));
      expect(err?.code).toBe("QMP_PROTOCOL");
      expect(err?.message).toContain(`event name "${name}" is not a QMP event name`);
      checkUncaught();
    }
  });

  it("QMP: an error reply whose class is an object with a toString key is a QmpCommandError", async () => {
    monitor('{"error": {"class": {"toString": 1}, "desc": ["x"]}, "id": "q2"}\n');
    const qmp = await QmpClient.connect({ socketPath: srv.path, commandTimeoutMs: 5000 });
    const err = await settles("execute", qmp.execute("query-status"));
    expect(err?.code).toBe("QMP_COMMAND_FAILED");
    expect(err?.message).toContain('["x"]');
    await qmp.close();
    checkUncaught();
  });

  it("QMP: a greeting without version or capabilities is a QmpConnectError, not a TypeError", async () => {
    for (const greeting of ['{"QMP": {}}\n', '{"QMP": 1}\n', "null\n"]) {
      monitor("", greeting);
      const err = await settles("connect", QmpClient.connect({ socketPath: srv.path, connectTimeoutMs: 5000 }));
      expect(err?.code).toBe("QMP_CONNECT_FAILED");
      expect(err?.message).toMatch(/greeting is not QMP/);
    }
  });

  it("guest agent: an error reply whose class is an object with a toString key is a GuestAgentCommandError", async () => {
    srv.handler.current = (s) => {
      let buf = "";
      s.on("data", (d: Buffer) => {
        buf += d.toString("latin1");
        const m = /"guest-sync-delimited","arguments":\{"id":(\d+)\}\}\n/.exec(buf);
        if (m) {
          buf = buf.slice(m.index + m[0].length);
          s.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(`{"return": ${m[1]}}\n`)]));
        } else if (buf.includes("guest-ping")) {
          s.write('{"error": {"class": {"toString": 1}, "desc": {"valueOf": 2}}}\n');
        }
      });
    };
    const qga = new GuestAgentClient({ socketPath: srv.path, commandTimeoutMs: 5000 });
    try {
      const err = await settles("execute", qga.execute("guest-ping"));
      expect(err?.code).toBe("GUEST_AGENT_COMMAND_FAILED");
      expect(err?.message).toContain('{"toString":1}');
    } finally {
      qga.close();
    }
    checkUncaught();
  });
});
