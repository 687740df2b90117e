import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { GuestAgentClient, GuestAgentCommandError, GuestAgentThawError, GuestAgentTimeoutError, GuestAgentUnavailableError } from "../../../src/qemu/guestAgent/index.js";
import { FakeQga } from "./fakeQga.js";

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(): Promise<{ fake: FakeQga; qga: GuestAgentClient }> {
  const fake = await FakeQga.start();
  cleanups.push(() => fake.stop());
  const qga = new GuestAgentClient({ socketPath: fake.socketPath, syncTimeoutMs: 500 });
  cleanups.push(() => qga.close());
  return { fake, qga };
}

const disabled = (command: string) => () => ({
  error: { class: "CommandNotFound", desc: `Command ${command} has been disabled` },
});

describe("withFrozenFilesystems", () => {
  it("freezes exactly around fn and reports application consistency", async () => {
    const { fake, qga } = await setup();
    const res = await qga.withFrozenFilesystems(
      async () => {
        fake.received.push("<fn>");
        return fake.state;
      },
      { freezeTimeoutMs: 1000 },
    );
    expect(res.result).toBe("frozen");
    expect(res.consistency).toBe("application");
    expect(res.freezeError).toBeUndefined();
    expect(res.frozenMs).toBeGreaterThanOrEqual(0);
    expect(fake.commands()).toEqual(["guest-fsfreeze-freeze", "<fn>", "guest-fsfreeze-thaw"]);
    expect(fake.state).toBe("thawed");
  });

  it("thaws when fn throws, and rethrows fn's error", async () => {
    const { fake, qga } = await setup();
    const boom = new Error("transaction failed");
    const err = await qga
      .withFrozenFilesystems(
        async () => {
          throw boom;
        },
        { freezeTimeoutMs: 1000 },
      )
      .catch((e: unknown) => e);
    expect(err).toBe(boom);
    expect(fake.commands()).toEqual(["guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]);
    expect(fake.state).toBe("thawed");
  });

  it("on a freeze timeout runs fn crash-consistent and still thaws after resyncing", async () => {
    const { fake, qga } = await setup();
    // A hook script that takes longer than the budget; the agent freezes anyway, late.
    fake.on("guest-fsfreeze-freeze", async () => {
      await sleep(300);
      fake.state = "frozen";
      return { return: 1 };
    });
    let ranFn = false;
    const res = await qga.withFrozenFilesystems(async () => (ranFn = true), { freezeTimeoutMs: 100 });
    expect(ranFn).toBe(true);
    expect(res.consistency).toBe("crash");
    expect(res.freezeError).toBeInstanceOf(GuestAgentTimeoutError);
    expect(res.frozenMs).toBeUndefined();
    // The thaw is queued behind the late freeze in the agent, so it undoes it.
    expect(fake.commands()).toEqual(["guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]);
    expect(fake.received.filter((c) => c === "guest-sync-delimited")).toHaveLength(2);
    expect(fake.state).toBe("thawed");
  });

  it("on a refused freeze runs fn crash-consistent, tries a thaw, and accepts status thawed", async () => {
    const { fake, qga } = await setup();
    fake.on("guest-fsfreeze-freeze", disabled("guest-fsfreeze-freeze"));
    fake.on("guest-fsfreeze-thaw", disabled("guest-fsfreeze-thaw"));
    const res = await qga.withFrozenFilesystems(async () => 42, { freezeTimeoutMs: 1000 });
    expect(res.result).toBe(42);
    expect(res.consistency).toBe("crash");
    expect(res.freezeError).toBeInstanceOf(GuestAgentCommandError);
    expect(res.freezeError?.message).toMatch(/has been disabled/);
    expect(fake.commands()).toEqual(["guest-fsfreeze-freeze", "guest-fsfreeze-thaw", "guest-fsfreeze-status"]);
  });

  it("without a reachable agent runs fn crash-consistent and sends nothing", async () => {
    const { fake, qga } = await setup();
    fake.answerSync = false;
    const res = await qga.withFrozenFilesystems(async () => "cut", { freezeTimeoutMs: 300 });
    expect(res).toMatchObject({ result: "cut", consistency: "crash" });
    expect(res.freezeError).toBeInstanceOf(GuestAgentUnavailableError);
    expect(fake.commands()).toEqual([]);
  });

  it("retries a failed thaw and succeeds", async () => {
    const { fake, qga } = await setup();
    let thaws = 0;
    fake.on("guest-fsfreeze-thaw", () => {
      if (++thaws < 2) return { error: { class: "GenericError", desc: "failed to thaw /: Device or resource busy" } };
      fake.state = "thawed";
      return { return: 2 };
    });
    const res = await qga.withFrozenFilesystems(async () => "ok", { freezeTimeoutMs: 1000, thawAttempts: 3 });
    expect(res.consistency).toBe("application");
    expect(fake.commands()).toEqual(["guest-fsfreeze-freeze", "guest-fsfreeze-thaw", "guest-fsfreeze-status", "guest-fsfreeze-thaw"]);
  });

  it("throws GuestAgentThawError when the guest stays frozen, carrying fn's error too", async () => {
    const { fake, qga } = await setup();
    fake.on("guest-fsfreeze-thaw", () => ({ error: { class: "GenericError", desc: "thaw failed" } }));
    const fnError = new Error("transaction failed");
    const err = await qga
      .withFrozenFilesystems(
        async () => {
          throw fnError;
        },
        { freezeTimeoutMs: 1000, thawAttempts: 2, thawTimeoutMs: 200 },
      )
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GuestAgentThawError);
    expect(err).toMatchObject({ code: "GUEST_AGENT_THAW_FAILED", attempts: 2, lastStatus: "frozen", operationError: fnError });
    expect((err as Error).message).toMatch(/guest-fsfreeze-status: frozen.*guest-fsfreeze-thaw/s);
    expect((err as Error).cause).toBeInstanceOf(GuestAgentCommandError);
    expect(fake.commands().filter((c) => c === "guest-fsfreeze-thaw")).toHaveLength(2);
  });

  it("downgrades to crash when the thaw fails but the guest is already thawed (VSS auto-thaw)", async () => {
    const { fake, qga } = await setup();
    fake.on("guest-fsfreeze-thaw", () => {
      fake.state = "thawed";
      return { error: { class: "GenericError", desc: "couldn't hold writes: fsfreeze is limited up to 10 seconds" } };
    });
    const res = await qga.withFrozenFilesystems(async () => "cut", { freezeTimeoutMs: 1000 });
    expect(res.consistency).toBe("crash");
    expect(res.freezeError?.message).toMatch(/limited up to 10 seconds/);
  });
});
