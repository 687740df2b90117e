import { afterEach, describe, expect, it } from "vitest";
import { NbdClient, NbdClosedError, NbdConnectError, NbdOptionError, NbdProtocolError, NbdTimeoutError, NbdUnsupportedError } from "../../../src/qemu/nbd/index.js";
import {
  FLAGS_RO,
  FLAGS_RW,
  REP_ACK,
  REP_ERR_UNKNOWN,
  REP_INFO,
  greeting,
  infoExport,
  optionReply,
  serveHandshake,
  simpleReply,
  startFakeServer,
  u32,
  type FakeConn,
  type FakeServer,
  type HandshakeSeen,
} from "./fakeServer.js";

let server: FakeServer | undefined;
let client: NbdClient | undefined;

afterEach(async () => {
  await client?.disconnect();
  client = undefined;
  await server?.close();
  server = undefined;
});

async function serve(script: (conn: FakeConn) => Promise<void>): Promise<FakeServer> {
  server = await startFakeServer(script);
  return server;
}

describe("NBD handshake", () => {
  it("negotiates structured replies, meta contexts and GO, exposing the export's properties", async () => {
    let seen: HandshakeSeen | undefined;
    const s = await serve(async (conn) => {
      seen = await serveHandshake(conn, {
        size: 5n << 30n,
        flags: FLAGS_RW,
        contexts: { "base:allocation": 0, "qemu:dirty-bitmap:b1": 7 },
        blockSize: [512, 4096, 64 << 20],
      });
    });
    client = await NbdClient.connect({
      socketPath: s.socketPath,
      exportName: "disk0",
      metaContexts: ["base:allocation", "qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:missing"],
    });
    expect(seen?.clientFlags).toBe(3); // FIXED_NEWSTYLE | NO_ZEROES
    expect(seen?.options).toEqual([8, 10, 7]); // STRUCTURED_REPLY, SET_META_CONTEXT, GO
    expect(seen?.requestedContexts).toEqual(["base:allocation", "qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:missing"]);
    expect(client.size).toBe(5 * 2 ** 30);
    expect(client.exportName).toBe("disk0");
    expect(client.transmissionFlags).toBe(FLAGS_RW);
    expect(client.readOnly).toBe(false);
    expect(client.canMultiConn).toBe(true);
    expect(client.structuredReplies).toBe(true);
    expect(client.blockSize).toEqual({ minimum: 512, preferred: 4096, maximum: 64 << 20 });
    expect(client.maxRequestBytes).toBe(32 << 20); // capped at 32 MiB whatever the server allows
    expect([...client.metaContextIds]).toEqual([
      ["base:allocation", 0],
      ["qemu:dirty-bitmap:b1", 7],
    ]);
    await expect(client.blockStatus("qemu:dirty-bitmap:missing", 0, 512)).rejects.toThrow(/not negotiated.*granted/);
  });

  it("skips SET_META_CONTEXT without contexts and defaults the block size when the server sends none", async () => {
    let seen: HandshakeSeen | undefined;
    const s = await serve(async (conn) => {
      seen = await serveHandshake(conn, { flags: FLAGS_RO, blockSize: null });
    });
    client = await NbdClient.connect({ socketPath: s.socketPath, exportName: "x" });
    expect(seen?.options).toEqual([8, 7]);
    expect(client.readOnly).toBe(true);
    expect(client.canMultiConn).toBe(false);
    expect(client.blockSize).toEqual({ minimum: 1, preferred: 4096, maximum: 32 << 20 });
    expect(client.maxRequestBytes).toBe(32 << 20);
  });

  it("honours a server maximum block size smaller than 32 MiB", async () => {
    const s = await serve(async (conn) => void (await serveHandshake(conn, { blockSize: [1, 4096, 1 << 20] })));
    client = await NbdClient.connect({ socketPath: s.socketPath, exportName: "x" });
    expect(client.maxRequestBytes).toBe(1 << 20);
  });

  it("reports a refused GO (unknown export) with the option, the server error and a hint", async () => {
    let sawAbort = false;
    const s = await serve(async (conn) => {
      conn.write(greeting());
      await conn.read(4);
      await conn.readOption(); // STRUCTURED_REPLY
      conn.write(optionReply(8, REP_ACK));
      await conn.readOption(); // GO
      conn.write(optionReply(7, REP_ERR_UNKNOWN, Buffer.from("export 'nope' not present")));
      const next = await conn.readOption();
      sawAbort = next.option === 2;
    });
    const err = await NbdClient.connect({ socketPath: s.socketPath, exportName: "nope" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdOptionError);
    const e = err as NbdOptionError;
    expect(e.code).toBe("NBD_OPTION_REFUSED");
    expect(e.message).toContain("NBD_OPT_GO");
    expect(e.message).toContain("NBD_REP_ERR_UNKNOWN");
    expect(e.message).toContain("export 'nope' not present");
    expect(e.message).toMatch(/check the export name/);
    expect(e.serverError).toBe("NBD_REP_ERR_UNKNOWN");
    await new Promise((r) => setTimeout(r, 50));
    expect(sawAbort).toBe(true); // the client leaves politely with NBD_OPT_ABORT
  });

  it("falls back to simple replies when STRUCTURED_REPLY is refused; block status is then unavailable", async () => {
    const s = await serve(async (conn) => {
      const seen = await serveHandshake(conn, { structured: false, contexts: { "base:allocation": 0 } });
      expect(seen.options).toEqual([8, 7]); // no SET_META_CONTEXT without structured replies
      const req = await conn.readRequest();
      conn.write(simpleReply(req.cookie, 0, Buffer.alloc(req.length, 0x42)));
      const bad = await conn.readRequest();
      conn.write(simpleReply(bad.cookie, 5)); // a failed simple-mode READ carries no payload
      const again = await conn.readRequest();
      conn.write(simpleReply(again.cookie, 0, Buffer.alloc(again.length, 0x43)));
    });
    client = await NbdClient.connect({ socketPath: s.socketPath, exportName: "x", metaContexts: ["base:allocation"] });
    expect(client.structuredReplies).toBe(false);
    expect(client.metaContextIds.size).toBe(0);
    const data = await client.read(4096, 8192);
    expect(data.equals(Buffer.alloc(8192, 0x42))).toBe(true);
    await expect(client.read(0, 4096)).rejects.toThrow(/READ of 4096 bytes at offset 0 failed.*EIO/);
    expect((await client.read(0, 512)).equals(Buffer.alloc(512, 0x43))).toBe(true);
    const err = await client.blockStatus("base:allocation", 0, 4096).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdUnsupportedError);
    expect((err as Error).message).toMatch(/refused structured replies.*BLOCK_STATUS/);
    expect(s.scriptErrors).toEqual([]);
  });

  it("fails with NbdClosedError when the server closes mid-greeting", async () => {
    const s = await serve(async (conn) => {
      conn.socket.end(greeting().subarray(0, 10));
    });
    const err = await NbdClient.connect({ socketPath: s.socketPath, exportName: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdClosedError);
    expect((err as NbdClosedError).code).toBe("NBD_CLOSED");
    expect((err as Error).message).toMatch(/closed during the handshake after 10 of 16 bytes of the server greeting/);
  });

  it("fails with NbdClosedError when the server closes in the middle of an option reply", async () => {
    const s = await serve(async (conn) => {
      conn.write(greeting());
      await conn.read(4);
      await conn.readOption();
      conn.write(optionReply(8, REP_ACK));
      await conn.readOption();
      conn.socket.end(optionReply(7, REP_INFO, infoExport(4096, 1)).subarray(0, 25));
    });
    const err = await NbdClient.connect({ socketPath: s.socketPath, exportName: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdClosedError);
    expect((err as Error).message).toMatch(/reply to NBD_OPT_GO/);
  });

  it("bounds the handshake with connectTimeoutMs", async () => {
    const s = await serve(async () => {
      /* never says anything */
    });
    const t0 = Date.now();
    const err = await NbdClient.connect({ socketPath: s.socketPath, exportName: "x", connectTimeoutMs: 150 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdTimeoutError);
    expect((err as NbdTimeoutError).code).toBe("NBD_TIMEOUT");
    expect((err as Error).message).toMatch(/within 150 ms.*server greeting/);
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it("rejects a server that is not NBD at all", async () => {
    const s = await serve(async (conn) => {
      conn.write(Buffer.from("SSH-2.0-OpenSSH_9.2p1 Debian\r\n"));
    });
    const err = await NbdClient.connect({ socketPath: s.socketPath, exportName: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect((err as NbdProtocolError).code).toBe("NBD_PROTOCOL");
    expect((err as Error).message).toMatch(/not an NBD server.*NBDMAGIC/);
  });

  it("refuses an oversized option reply without waiting for its data", async () => {
    const s = await serve(async (conn) => {
      conn.write(greeting());
      await conn.read(4);
      await conn.readOption();
      const r = optionReply(8, REP_ACK);
      r.writeUInt32BE(0xffffffff, 16);
      conn.write(r);
    });
    const err = await NbdClient.connect({ socketPath: s.socketPath, exportName: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect((err as Error).message).toMatch(/claims 4294967295 bytes.*refusing more than 65536/);
  });

  it("rejects a wrong option reply magic, naming what arrived", async () => {
    const s = await serve(async (conn) => {
      conn.write(greeting());
      await conn.read(4);
      await conn.readOption();
      conn.write(Buffer.alloc(20, 0xee));
    });
    const err = await NbdClient.connect({ socketPath: s.socketPath, exportName: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect((err as Error).message).toMatch(/option reply magic 0xeeeeeeeeeeeeeeee at stream offset 18/);
  });

  it("rejects an export larger than Number.MAX_SAFE_INTEGER", async () => {
    const s = await serve(async (conn) => void (await serveHandshake(conn, { size: 1n << 60n })));
    const err = await NbdClient.connect({ socketPath: s.socketPath, exportName: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdUnsupportedError);
    expect((err as Error).message).toMatch(/1152921504606846976 bytes.*2\^53/);
  });

  it("rejects an inconsistent NBD_INFO_BLOCK_SIZE", async () => {
    const s = await serve(async (conn) => void (await serveHandshake(conn, { blockSize: [4096, 512, 1 << 20] })));
    const err = await NbdClient.connect({ socketPath: s.socketPath, exportName: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect((err as Error).message).toMatch(/NBD_INFO_BLOCK_SIZE.*inconsistent/);
  });

  it("rejects a meta context reply shorter than its id", async () => {
    const s = await serve(async (conn) => {
      conn.write(greeting());
      await conn.read(4);
      await conn.readOption();
      conn.write(optionReply(8, REP_ACK));
      await conn.readOption();
      conn.write(optionReply(10, 4, u32(1).subarray(0, 3)));
    });
    const err = await NbdClient.connect({
      socketPath: s.socketPath,
      exportName: "x",
      metaContexts: ["base:allocation"],
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdProtocolError);
    expect((err as Error).message).toMatch(/NBD_REP_META_CONTEXT.*3 bytes/);
  });

  it("says no server is listening when the socket does not exist", async () => {
    const err = await NbdClient.connect({ socketPath: "/nonexistent/qreplica/nbd.sock", exportName: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdConnectError);
    expect((err as NbdConnectError).code).toBe("NBD_CONNECT_FAILED");
    expect((err as Error).message).toMatch(/no NBD server listening at \/nonexistent\/qreplica\/nbd.sock: is the QEMU process running and its NBD server started\?/);
    expect((err as Error).cause).toBeDefined();
  });
});
