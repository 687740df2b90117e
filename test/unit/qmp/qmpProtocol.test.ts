import net from "node:net";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { QmpClient, QmpCommandError, QmpConnectError, QmpProtocolError, QmpTimeoutError } from "../../../src/qemu/qmp/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const cleanups: Array<() => unknown> = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

const GREETING = JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: "" }, capabilities: [] } });

/** A scripted monitor: answers each command line with whatever `reply` returns (nothing = silence). */
async function fakeMonitor(opts: { greeting?: string | null; reply: (cmd: { execute: string; id?: string }, sock: net.Socket) => void }): Promise<string> {
  const tmp = makeTmpDir();
  const path = join(tmp.path, "qmp.sock");
  const server = net.createServer((sock) => {
    if (opts.greeting !== null) sock.write((opts.greeting ?? GREETING) + "\n");
    let buf = "";
    sock.on("data", (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf("\n"); nl !== -1; nl = buf.indexOf("\n")) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        opts.reply(JSON.parse(line) as { execute: string; id?: string }, sock);
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  cleanups.push(() => server.close(), tmp.cleanup);
  return path;
}

const ok = (cmd: { id?: string }, sock: net.Socket, ret: unknown = {}) => sock.write(JSON.stringify({ return: ret, id: cmd.id }) + "\n");

describe("QMP client protocol handling", () => {
  it("times a silent command out with a QmpTimeoutError naming the command", async () => {
    const path = await fakeMonitor({ reply: (cmd, sock) => (cmd.execute === "qmp_capabilities" ? ok(cmd, sock) : undefined) });
    const qmp = await QmpClient.connect({ socketPath: path });
    const err = await qmp.execute("query-status", undefined, { timeoutMs: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect((err as Error).message).toMatch(/query-status.*100 ms/);
    expect(qmp.isClosed).toBe(true);
  });

  it("matches replies that arrive out of order and in split packets, with events interleaved", async () => {
    const held: Array<{ id?: string }> = [];
    const path = await fakeMonitor({
      reply: (cmd, sock) => {
        if (cmd.execute === "qmp_capabilities") return ok(cmd, sock);
        held.push(cmd);
        if (held.length === 2) {
          const [a, b] = held;
          const text =
            JSON.stringify({ event: "STOP", data: {}, timestamp: { seconds: 1, microseconds: 2 } }) +
            "\n" +
            JSON.stringify({ return: "second", id: b!.id }) +
            "\n" +
            JSON.stringify({ return: "first", id: a!.id }) +
            "\n";
          sock.write(text.slice(0, 17));
          setTimeout(() => sock.write(text.slice(17)), 20);
        }
      },
    });
    const qmp = await QmpClient.connect({ socketPath: path });
    const stop = qmp.waitForEvent("STOP");
    const [r1, r2] = await Promise.all([qmp.execute("a"), qmp.execute("b")]);
    expect([r1, r2]).toEqual(["first", "second"]);
    expect((await stop).timestamp.seconds).toBe(1);
    await qmp.close();
  });

  it("turns an error reply into QmpCommandError with class and description", async () => {
    const path = await fakeMonitor({
      reply: (cmd, sock) =>
        cmd.execute === "qmp_capabilities" ? ok(cmd, sock) : sock.write(JSON.stringify({ error: { class: "DeviceNotFound", desc: "no such node" }, id: cmd.id }) + "\n"),
    });
    const qmp = await QmpClient.connect({ socketPath: path });
    const err = (await qmp.execute("blockdev-del").catch((e: unknown) => e)) as QmpCommandError;
    expect(err.code).toBe("QMP_COMMAND_FAILED");
    expect(err.errorClass).toBe("DeviceNotFound");
    expect(err.message).toMatch(/blockdev-del.*no such node/);
    await qmp.close();
  });

  it("fails pending commands with a protocol error on a line that is not JSON", async () => {
    const path = await fakeMonitor({ reply: (cmd, sock) => (cmd.execute === "qmp_capabilities" ? ok(cmd, sock) : sock.write("}garbage{\n")) });
    const qmp = await QmpClient.connect({ socketPath: path });
    await expect(qmp.execute("query-status")).rejects.toBeInstanceOf(QmpProtocolError);
  });

  it("refuses a peer whose greeting is not QMP", async () => {
    const path = await fakeMonitor({ greeting: '{"hello": 1}', reply: () => undefined });
    await expect(QmpClient.connect({ socketPath: path })).rejects.toBeInstanceOf(QmpConnectError);
  });

  it("gives up on a peer that never greets", async () => {
    const path = await fakeMonitor({ greeting: null, reply: () => undefined });
    const err = await QmpClient.connect({ socketPath: path, connectTimeoutMs: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpConnectError);
    expect((err as Error).message).toMatch(/no greeting within 100 ms/);
  });
});
