/** A point cut in a consistency group's cut-off records the group, its cut-off id and members. */
import { describe, expect, it } from "vitest";
import { commitCycle, InvalidCommandInputError } from "../../../src/ledger/index.js";
import { cycleInput, enabled, fold, incremental, initialCommitted, initialStarted, run } from "./fixtures.js";

const VM = "web1";
const replicating = [enabled, initialStarted, initialCommitted, incremental(2)];
const group = { groupId: "app1", cutoffId: "20261205T063712587Z", members: ["db1", "web1"], pauseMs: 12.5 };

describe("a point cut in a consistency group", () => {
  it("carries the group on RecoveryPointCreated, and the relationship's point keeps it", () => {
    const s = fold(VM, ...replicating);
    const events = commitCycle(s, { ...cycleInput(VM, 3, "incremental"), group });
    expect(events.find((e) => e.type === "RecoveryPointCreated")).toMatchObject({ data: { pointId: "rp-3", group } });
    const after = run(s, (x) => commitCycle(x, { ...cycleInput(VM, 3, "incremental"), group }));
    expect(after.points.at(-1)).toMatchObject({ pointId: "rp-3", group });
    // A point without a group has none.
    expect(after.points.at(-2)?.group).toBeUndefined();
  });

  it("is refused when the group does not name the VM among its members, or has no cut-off id", () => {
    const s = fold(VM, ...replicating);
    expect(() => commitCycle(s, { ...cycleInput(VM, 3, "incremental"), group: { ...group, members: ["db1", "app2"] } })).toThrow(InvalidCommandInputError);
    expect(() => commitCycle(s, { ...cycleInput(VM, 3, "incremental"), group: { ...group, cutoffId: "" } })).toThrow(/group must name/);
  });
});
