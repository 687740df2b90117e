import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import {
  GuestAgentClient,
  GuestAgentCommandError,
  GuestAgentProtocolError,
  GuestAgentTimeoutError,
  GuestAgentUnavailableError,
  type GuestAgentOptions,
} from "../../../src/qemu/guestAgent/index.js";
import { FakeQga } from "./fakeQga.js";

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(opts: Partial<GuestAgentOptions> = {}): Promise<{ fake: FakeQga; qga: GuestAgentClient }> {
  const fake = await FakeQga.start();
  cleanups.push(() => fake.stop());
  const qga = new GuestAgentClient({ socketPath: fake.socketPath, ...opts });
  cleanups.push(() => qga.close());
  return { fake, qga };
}

describe("GuestAgentClient", () => {
  it("resynchronises first, skipping stale output before the 0xFF sentinel", async () => {
    const { fake, qga } = await setup();
    // A previous client's unread reply, a half line, and bytes that are not even UTF-8 JSON.
    fake.beforeSentinel = Buffer.concat([Buffer.from('{"return": "thawed", "id": "qr1"}\n{"return": 4'), Buffer.from([0x00, 0xfe, 0x0a]), Buffer.from('garbage\n{"ret')]);
    expect(await qga.fsfreezeStatus()).toBe("thawed");
    expect(fake.received).toEqual(["guest-sync-delimited", "guest-fsfreeze-status"]);
    await qga.ping();
    expect(fake.received).toEqual(["guest-sync-delimited", "guest-fsfreeze-status", "guest-ping"]);
  });

  it("sends 0xFF before the sync and waits for the reply with its own id", async () => {
    const { fake, qga } = await setup();
    // An earlier client's sync reply, sentinel and all, arriving before ours.
    fake.on("guest-sync-delimited", (args) => {
      const reply = (id: unknown) => Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ return: id }) + "\n")]);
      return { raw: Buffer.concat([reply(Number(args?.id) + 1), Buffer.from('{"return": {}}\n'), reply(args?.id)]) };
    });
    await qga.ping();
    expect(fake.sentinelsReceived).toBe(1);
    expect(fake.received).toEqual(["guest-sync-delimited", "guest-ping"]);
  });

  it("reports the agent's error class and description", async () => {
    const { fake, qga } = await setup();
    fake.on("guest-fsfreeze-freeze", () => ({
      error: { class: "CommandNotFound", desc: "Command guest-fsfreeze-freeze has been disabled" },
    }));
    const err = await qga.fsfreezeFreeze().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestAgentCommandError);
    expect(err).toMatchObject({ code: "GUEST_AGENT_COMMAND_FAILED", errorClass: "CommandNotFound", command: "guest-fsfreeze-freeze" });
    expect(await qga.fsfreezeStatus()).toBe("thawed");
  });

  it("times out, then resyncs so the late reply is not taken for the next command's", async () => {
    const { fake, qga } = await setup();
    fake.echoId = false; // so only the resync, not id matching, keeps the late reply out
    fake.on("guest-fsfreeze-status", async () => {
      await sleep(300);
      return { return: "frozen" };
    });
    const err = await qga.fsfreezeStatus({ timeoutMs: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestAgentTimeoutError);
    expect(err).toMatchObject({ code: "GUEST_AGENT_TIMEOUT", command: "guest-fsfreeze-status", timeoutMs: 100 });
    // The agent is sequential: this sync is answered only after the late "frozen" reply.
    fake.on("guest-fsfreeze-status", () => ({ return: "thawed" }));
    expect(await qga.fsfreezeStatus()).toBe("thawed");
    expect(fake.received.filter((c) => c === "guest-sync-delimited")).toHaveLength(2);
  });

  it("does not confuse replies when the agent does not echo ids", async () => {
    const { fake, qga } = await setup();
    fake.echoId = false;
    await qga.ping();
    expect(await qga.fsfreezeStatus()).toBe("thawed");
  });

  it("rejects a garbage reply line as a protocol error and recovers", async () => {
    const { fake, qga } = await setup();
    fake.on("guest-ping", () => ({ raw: "this is not json\n" }));
    const err = await qga.ping().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestAgentProtocolError);
    expect((err as Error).message).toMatch(/not JSON: this is not json/);
    fake.on("guest-ping", () => ({ return: {} }));
    await qga.ping();
    expect(fake.received.filter((c) => c === "guest-sync-delimited")).toHaveLength(2);
  });

  it("bounds the length of a reply line", async () => {
    const { fake, qga } = await setup({ maxLineBytes: 1024 });
    fake.on("guest-ping", () => ({ raw: "x".repeat(5000) + "\n" }));
    const err = await qga.ping().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestAgentProtocolError);
    expect((err as Error).message).toMatch(/longer than 1024 bytes/);
    fake.on("guest-ping", () => ({ return: {} }));
    await qga.ping();
  });

  it("rejects a reply of unknown shape and a status it does not know", async () => {
    const { fake, qga } = await setup();
    fake.on("guest-ping", () => ({ raw: '{"hello": 1}\n' }));
    await expect(qga.ping()).rejects.toBeInstanceOf(GuestAgentProtocolError);
    fake.on("guest-fsfreeze-status", () => ({ return: "error" }));
    await expect(qga.fsfreezeStatus()).rejects.toThrow(/guest-fsfreeze-status returned "error"/);
  });

  it("names the fix when the socket is missing", async () => {
    const qga = new GuestAgentClient({ socketPath: "/tmp/qr-does-not-exist/qga.sock" });
    const err = await qga.ping().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestAgentUnavailableError);
    expect(err).toMatchObject({ code: "GUEST_AGENT_UNAVAILABLE", commandWritten: false });
    expect((err as Error).message).toMatch(/does not exist.*qemu-guest-agent runs in the guest.*org\.qemu\.guest_agent\.0/s);
  });

  it("reports an agent that never answers the sync as unavailable", async () => {
    const { fake, qga } = await setup({ syncTimeoutMs: 200 });
    fake.answerSync = false;
    const err = await qga.ping().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestAgentUnavailableError);
    expect((err as Error).message).toMatch(/no answer to guest-sync-delimited within 200 ms/);
    expect(fake.commands()).toEqual([]);
  });

  it("fails a pending command when the channel closes, and reconnects for the next", async () => {
    const { fake, qga } = await setup();
    await qga.ping();
    fake.on("guest-fsfreeze-freeze", () => ({ none: true }));
    const freezing = qga.fsfreezeFreeze().catch((e: unknown) => e);
    await sleep(50);
    await fake.stop();
    const err = await freezing;
    expect(err).toBeInstanceOf(GuestAgentUnavailableError);
    expect(err).toMatchObject({ commandWritten: true });
    expect((err as Error).message).toMatch(/while 'guest-fsfreeze-freeze' was pending/);

    const again = await FakeQga.start();
    cleanups.push(() => again.stop());
    const qga2 = new GuestAgentClient({ socketPath: again.socketPath });
    cleanups.push(() => qga2.close());
    await qga2.ping();
  });

  it("runs commands one at a time in call order", async () => {
    const { fake, qga } = await setup();
    fake.on("guest-ping", async () => {
      await sleep(30);
      return { return: {} };
    });
    await Promise.all([qga.ping(), qga.fsfreezeStatus(), qga.ping(), qga.fsfreezeStatus()]);
    expect(fake.commands()).toEqual(["guest-ping", "guest-fsfreeze-status", "guest-ping", "guest-fsfreeze-status"]);
  });
});
