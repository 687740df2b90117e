/**
 * A primary that cannot start its cycles (scratch nearly full) says so; the ledger records it once
 * per code while it lasts, not once per skipped cycle, and the next commit ends it.
 */
import { describe, expect, it } from "vitest";
import {
  InvalidCommandInputError,
  InvalidTransitionError,
  StaleGenerationError,
  StatusProjection,
  executeCommand,
  getInMemoryEventStore,
  loadRelationship,
  pause,
  recordCycleSkipped,
  type Decide,
  type RecordCycleSkippedInput,
} from "../../../src/ledger/index.js";
import { cutoff, enabled, failedOverUnplanned, fold, incremental, initialCommitted, initialStarted, run } from "./fixtures.js";

const VM = "web1";
const replicating = [enabled, initialStarted, initialCommitted, incremental(2)];
const LOW = "SCRATCH_SPACE_LOW";
const input = (overrides: Partial<RecordCycleSkippedInput> = {}): RecordCycleSkippedInput => ({
  generation: 1,
  code: LOW,
  message: "the scratch directory /var/lib/qreplica/scratch has 2.0 MiB free, less than the 8.0 MiB a cut-off needs",
  skippedAt: cutoff(3),
  ...overrides,
});
const skipped =
  (overrides: Partial<RecordCycleSkippedInput> = {}): Decide =>
  (s) =>
    recordCycleSkipped(s, input(overrides));

describe("recordCycleSkipped", () => {
  it("records the first skip of a code, nothing more while it lasts, and the next commit clears it", () => {
    let s = fold(VM, ...replicating);
    expect(skipped()(s)).toEqual([{ type: "CycleSkipped", data: { generation: 1, code: LOW, message: input().message, skippedAt: cutoff(3) } }]);
    s = run(s, skipped());
    expect(s.cycleSkipped).toEqual({ code: LOW, message: input().message, since: cutoff(3) });
    // Every later interval reports it again (with other free-space figures): nothing to record.
    for (let i = 4; i < 10; i++) expect(skipped({ skippedAt: cutoff(i), message: `still low (${i})` })(s)).toEqual([]);
    // Another cause is news.
    expect(skipped({ code: "OTHER_CAUSE" })(s)).toHaveLength(1);
    // The cycle that got through ends it; the same code later is recorded again.
    s = run(s, incremental(3));
    expect(s.cycleSkipped).toBeUndefined();
    expect(skipped({ skippedAt: cutoff(5) })(s)).toHaveLength(1);
  });

  it("refuses a stale generation, states where no cycle is due, and malformed input", () => {
    const s = fold(VM, ...replicating);
    expect(() => skipped({ generation: 2 })(s)).toThrow(StaleGenerationError);
    expect(() => skipped({ code: "" })(s)).toThrow(InvalidCommandInputError);
    expect(() => skipped({ skippedAt: "yesterday" })(s)).toThrow(InvalidCommandInputError);
    expect(() => skipped()(run(s, (x) => pause(x, { reason: "WAN" })))).toThrow(InvalidTransitionError);
    // After a failover (generation 2) the VM runs here: no cycle is due from any primary.
    expect(() => skipped({ generation: 2 })(run(s, failedOverUnplanned("rp-2")))).toThrow(InvalidTransitionError);
    // During the initial replication a cycle is due too (a full one).
    expect(skipped()(fold(VM, enabled))).toHaveLength(1);
  });

  it("through the ledger: one event for a hundred reports, health data in the status projection until a commit", async () => {
    const store = getInMemoryEventStore();
    for (const d of replicating) await executeCommand(store, VM, d);
    for (let i = 0; i < 100; i++) await executeCommand(store, VM, skipped({ skippedAt: new Date(Date.parse(cutoff(3)) + i * 1000).toISOString() }));
    const types = (await store.readAll({})).map((e) => e.type);
    expect(types.filter((t) => t === "CycleSkipped")).toHaveLength(1);
    let status = (await StatusProjection.rebuild(store)).get(VM, new Date(cutoff(4)))!;
    expect(status.cycleSkipped).toEqual({ code: LOW, message: input().message, since: cutoff(3) });
    expect(status.lastError?.reason).toBe(LOW);
    expect(status.consecutiveFailures).toBe(0);
    await executeCommand(store, VM, incremental(3));
    status = (await StatusProjection.rebuild(store)).get(VM, new Date(cutoff(4)))!;
    expect(status.cycleSkipped).toBeUndefined();
    expect((await loadRelationship(store, VM)).state.cycleSkipped).toBeUndefined();
  });
});
