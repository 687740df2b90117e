/** Per-disk changed bytes recorded with a committed cycle (what `points --json` shows per disk). */
import { describe, expect, it } from "vitest";
import { commitCycle, InvalidCommandInputError } from "../../../src/ledger/index.js";
import { cycleInput, enabled, fold, incremental, initialCommitted, initialStarted } from "./fixtures.js";

const VM = "web1";
const replicating = [enabled, initialStarted, initialCommitted, incremental(2)];

describe("per-disk changed bytes on a committed cycle", () => {
  it("are recorded when they add up to the cycle's data bytes, and refused otherwise", () => {
    const s = fold(VM, ...replicating);
    const ok = commitCycle(s, cycleInput(VM, 3, "incremental", { dataBytes: 300, diskDataBytes: { disk0: 100, disk1: 200 } }));
    expect(ok[0]).toMatchObject({ type: "CycleCommitted", data: { dataBytes: 300, diskDataBytes: { disk0: 100, disk1: 200 } } });
    expect(() => commitCycle(s, cycleInput(VM, 3, "incremental", { dataBytes: 300, diskDataBytes: { disk0: 100 } }))).toThrow(InvalidCommandInputError);
    expect(() => commitCycle(s, cycleInput(VM, 3, "incremental", { dataBytes: 300, diskDataBytes: { disk0: -1, disk1: 301 } }))).toThrow(InvalidCommandInputError);
  });
});
