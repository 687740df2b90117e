import { describe, expect, it } from "vitest";
import { GroupCutoff } from "../../../replica-agent/capture/groupCutoff.js";
import { silentLogger } from "../../../src/common/logger.js";
import type { QmpClient } from "../../../src/qemu/qmp/index.js";

/** A monitor that records what it is asked, in one log shared by the group's members. */
function monitor(vm: string, log: string[], opts: { running?: boolean; failStop?: boolean } = {}): QmpClient {
  return {
    isClosed: false,
    socketPath: `/nowhere/${vm}`,
    async execute(command: string) {
      if (command === "query-status") return { running: opts.running ?? true, status: "running" };
      log.push(`${vm}:${command}`);
      if (command === "stop" && opts.failStop) throw new Error("stop timed out");
      return {};
    },
  } as unknown as QmpClient;
}
const marker = (vm: string, log: string[]) => ({ set: () => log.push(`${vm}:marked`), clear: () => log.push(`${vm}:unmarked`) });

describe("group cut-off coordination (logic; the real QEMU run is test/e2e/consistencyGroup.test.ts)", () => {
  it("stops every member before any member cuts, resumes them after all cut; one cut-off id for all", async () => {
    const log: string[] = [];
    const g = GroupCutoff.for("unit-all", ["a", "b"], 60_000);
    const cut = (vm: string) => async () => {
      log.push(`${vm}:cut`);
      return vm;
    };
    const [a, b] = await Promise.all([
      g.join("a", monitor("a", log), marker("a", log), silentLogger, cut("a")),
      g.join("b", monitor("b", log), marker("b", log), silentLogger, cut("b")),
    ]);
    expect([a.result, b.result]).toEqual(["a", "b"]);
    expect(a.group).toEqual(b.group);
    expect(a.group).toMatchObject({ groupId: "unit-all", members: ["a", "b"], joined: ["a", "b"] });
    expect(a.group.cutoffId).toMatch(/^\d{8}T\d{9}Z$/);
    expect(a.group.groupPauseMs).toBeGreaterThanOrEqual(0);
    const at = (e: string) => log.indexOf(e);
    for (const vm of ["a", "b"]) {
      expect(at(`${vm}:marked`)).toBeLessThan(at(`${vm}:stop`));
      for (const other of ["a", "b"]) expect(at(`${vm}:stop`)).toBeLessThan(at(`${other}:cut`));
      for (const other of ["a", "b"]) expect(at(`${vm}:cont`)).toBeGreaterThan(at(`${other}:cut`));
      expect(at(`${vm}:unmarked`)).toBeGreaterThan(at(`${vm}:cont`));
    }
  });

  it("a member that does not arrive in time is not waited for: the others cut, and the cut names who joined", async () => {
    const log: string[] = [];
    const g = GroupCutoff.for("unit-late", ["a", "b"], 50);
    const r = await g.join("a", monitor("a", log), marker("a", log), silentLogger, async () => 1);
    expect(r.group.joined).toEqual(["a"]);
    expect(r.group.members).toEqual(["a", "b"]);
    expect(log).toEqual(["a:marked", "a:stop", "a:cont", "a:unmarked"]);
  });

  it("a member whose cut fails is told so; the others' cuts stand and every guest is resumed; a guest not running is not stopped", async () => {
    const log: string[] = [];
    const g = GroupCutoff.for("unit-fail", ["a", "b", "c"], 60_000);
    const outcomes = await Promise.allSettled([
      g.join("a", monitor("a", log), marker("a", log), silentLogger, async () => "ok"),
      g.join("b", monitor("b", log), marker("b", log), silentLogger, async () => {
        throw new Error("transaction failed");
      }),
      g.join("c", monitor("c", log, { running: false }), marker("c", log), silentLogger, async () => "paused by its operator"),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect((outcomes[1] as PromiseRejectedResult).reason).toMatchObject({ message: "transaction failed" });
    expect(log.filter((e) => e.endsWith(":cont")).sort()).toEqual(["a:cont", "b:cont"]);
    expect(log.some((e) => e.startsWith("c:"))).toBe(false);
    expect((outcomes[2] as PromiseFulfilledResult<{ pausedMs: number | undefined }>).value.pausedMs).toBeUndefined();
  });

  it("a member whose stop failed is not cut and is resumed all the same (the stop may have taken effect late)", async () => {
    const log: string[] = [];
    const g = GroupCutoff.for("unit-stop", ["a", "b"], 60_000);
    const outcomes = await Promise.allSettled([
      g.join("a", monitor("a", log), marker("a", log), silentLogger, async () => log.push("a:cut")),
      g.join("b", monitor("b", log, { failStop: true }), marker("b", log), silentLogger, async () => log.push("b:cut")),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(["fulfilled", "rejected"]);
    expect(log).not.toContain("b:cut");
    expect(log).toContain("b:cont");
    expect(log.filter((e) => e === "b:unmarked")).toHaveLength(1);
  });
});
