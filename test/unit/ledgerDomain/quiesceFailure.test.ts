/**
 * A due application-consistent point the guest could not be frozen for is committed
 * crash-consistent with the reason; the relationship keeps it (health warns) until an
 * application-consistent point commits, and a failover ends it.
 */
import { describe, expect, it } from "vitest";
import { commitCycle, InvalidCommandInputError, type Decide } from "../../../src/ledger/index.js";
import { cutoff, cycleInput, enabled, failedOverUnplanned, fold, incremental, initialCommitted, initialStarted, run } from "./fixtures.js";

const VM = "web1";
const HUNG = "GUEST_AGENT_UNAVAILABLE: no answer to guest-sync-delimited within 3000 ms";
const replicating = [enabled, initialStarted, initialCommitted, incremental(2)];
const crashWithFailure =
  (seq: number): Decide =>
  (s) =>
    commitCycle(s, cycleInput(s.vmId, seq, "incremental", { consistency: "crash", quiesceFailure: HUNG }));
const application =
  (seq: number): Decide =>
  (s) =>
    commitCycle(s, cycleInput(s.vmId, seq, "incremental", { consistency: "application" }));

describe("a failed freeze on a committed cycle", () => {
  it("is recorded with the cycle, kept over crash points, and cleared by an application-consistent point", () => {
    let s = fold(VM, ...replicating);
    const events = crashWithFailure(3)(s);
    expect(events[0]).toMatchObject({ type: "CycleCommitted", data: { cycleSeq: 3, consistency: "crash", quiesceFailure: HUNG } });
    s = run(s, crashWithFailure(3));
    expect(s.quiesceFailure).toEqual({ cycleSeq: 3, at: cutoff(3), reason: HUNG });
    // Crash points that were not to be frozen say nothing about the guest agent.
    s = run(s, (x) => commitCycle(x, cycleInput(VM, 4, "incremental", { consistency: "crash" })));
    expect(s.quiesceFailure?.cycleSeq).toBe(3);
    s = run(s, application(5));
    expect(s.quiesceFailure).toBeUndefined();
  });

  it("ends with a failover", () => {
    const s = run(fold(VM, ...replicating, crashWithFailure(3)), failedOverUnplanned("rp-3"));
    expect(s.quiesceFailure).toBeUndefined();
  });

  it("is refused on an application-consistent point, and when empty", () => {
    const s = fold(VM, ...replicating);
    expect(() => commitCycle(s, cycleInput(VM, 3, "incremental", { consistency: "application", quiesceFailure: HUNG }))).toThrow(InvalidCommandInputError);
    expect(() => commitCycle(s, cycleInput(VM, 3, "incremental", { consistency: "crash", quiesceFailure: "" }))).toThrow(InvalidCommandInputError);
  });
});
