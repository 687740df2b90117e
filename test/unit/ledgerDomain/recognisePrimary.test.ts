/** An agent that lost its state presents generation 0: the current primary is recognised, only a failover fences. */
import { describe, expect, it } from "vitest";
import { StaleGenerationError, cancelFailover, commitCycle, completeFailover, pause, recogniseCurrentPrimary, type Decide } from "../../../src/ledger/index.js";
import { cycleInput, enabled, failedOverUnplanned, fold, incremental, initialCommitted, initialStarted, enableInput, run } from "./fixtures.js";

const VM = "web1";
const PRIMARY = enableInput().primaryIdentity;
const upTo = (n: number): Decide[] => [enabled, initialStarted, initialCommitted, ...Array.from({ length: n - 1 }, (_, i) => incremental(i + 2))];
const recognise =
  (presentedGeneration: number, peerIdentity = PRIMARY): Decide =>
  (s) =>
    recogniseCurrentPrimary(s, { presentedGeneration, peerIdentity });

describe("recogniseCurrentPrimary", () => {
  it("tells the relationship's own primary the current generation when no failover moved it", () => {
    const s = fold(VM, ...upTo(3));
    expect(recognise(0)(s)).toEqual([{ type: "GenerationAcknowledged", data: { peerIdentity: PRIMARY, presentedGeneration: 0, generation: 1 } }]);
    expect(recognise(1)(s)).toEqual([]);
    expect(recognise(0)(run(s, (x) => pause(x, { reason: "WAN" })))).toHaveLength(1);
  });

  it("after a cancelled failover (and a cycle that closed the handover) the primary is still the primary", () => {
    const s = fold(
      VM,
      ...upTo(2),
      failedOverUnplanned(),
      (x) => cancelFailover(x),
      (x) => commitCycle(x, cycleInput(VM, 3, "incremental", { generation: 2 })),
    );
    expect(s).toMatchObject({ state: "replicating", generation: 2, generationHandover: undefined });
    expect(recognise(0)(s)).toMatchObject([{ data: { presentedGeneration: 0, generation: 2 } }]);
    expect(recognise(1)(s)).toMatchObject([{ data: { presentedGeneration: 1, generation: 2 } }]);
  });

  it("refuses another identity, a future generation, and any primary once failed over", () => {
    const s = fold(VM, ...upTo(2));
    expect(() => recognise(0, "agent.elsewhere.example")(s)).toThrow(StaleGenerationError);
    expect(() => recognise(2)(s)).toThrow(StaleGenerationError);
    const failed = run(s, failedOverUnplanned());
    expect(failed.state).toBe("failed-over-waiting-completion");
    expect(() => recognise(0)(failed)).toThrow(StaleGenerationError);
    expect(() => recognise(1)(failed)).toThrow(StaleGenerationError);
    expect(() => recognise(1)(run(failed, (x) => completeFailover(x)))).toThrow(StaleGenerationError);
  });
});
