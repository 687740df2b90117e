/**
 * Extended replication (A -> B -> C), at C: a failover at B is learnt through the generation. Only
 * the primary C already accepts may move it, only upwards, only with the declaration, and only
 * while C receives from it; older generations are fenced afterwards, every point is kept.
 */
import { describe, expect, it } from "vitest";
import {
  StaleGenerationError,
  UpstreamFailoverRefusedError,
  approveResync,
  commitCycle,
  completeFailover,
  markResyncRequired,
  pause,
  recogniseCurrentPrimary,
  recogniseUpstreamFailover,
  resume,
  startResync,
  type Decide,
} from "../../../src/ledger/index.js";
import { cutoff, cycleInput, enabled, failedOverUnplanned, fold, incremental, initialCommitted, initialStarted, enableInput, run } from "./fixtures.js";

const VM = "web1";
const PRIMARY = enableInput().primaryIdentity;
const REASON = "VM web1 failed over at site site-b (unplanned, generation 2 there)";
const upTo = (n: number): Decide[] => [enabled, initialStarted, initialCommitted, ...Array.from({ length: n - 1 }, (_, i) => incremental(i + 2))];
const upstream =
  (presentedGeneration: number, peerIdentity = PRIMARY, reason = REASON): Decide =>
  (s) =>
    recogniseUpstreamFailover(s, { presentedGeneration, peerIdentity, reason });

describe("recogniseUpstreamFailover", () => {
  it("moves the generation for the relationship's own primary, asks for a resync and keeps every point", () => {
    const before = fold(VM, ...upTo(3));
    expect(before).toMatchObject({ state: "replicating", generation: 1 });
    expect(upstream(2)(before)).toEqual([{ type: "PrimaryFailedOverUpstream", data: { peerIdentity: PRIMARY, previousGeneration: 1, generation: 2, reason: REASON } }]);
    const after = run(before, upstream(2));
    expect(after).toMatchObject({ state: "resync-required", generation: 2, resyncReason: `the primary failed over upstream: ${REASON}` });
    expect(after.points).toEqual(before.points);
    // The same Hello again (the agent reconnects): nothing more to record.
    expect(upstream(2)(after)).toEqual([]);
    // The resync runs in the new generation and completes as any other.
    const resynced = run(
      run(after, (s) => startResync(s, { cycleSeq: 4, cutoffAt: cutoff(4), generation: 2 })),
      (s) => commitCycle(s, cycleInput(VM, 4, "resync", { generation: 2 })),
    );
    expect(resynced).toMatchObject({ state: "replicating", generation: 2, resyncReason: undefined });
    expect(resynced.points.map((p) => p.cycleSeq)).toEqual([1, 2, 3, 4]);
  });

  it("clears a resync go-ahead given before it: with resync manual, the operator decides again for this one", () => {
    const approved = fold(
      VM,
      ...upTo(2),
      (s) => markResyncRequired(s, { reason: "BITMAP_INCONSISTENT" }),
      (s) => approveResync(s, { approvedBy: "olga", approvedByRole: "operator" }),
    );
    expect(approved.resyncApproval).toEqual({ approvedBy: "olga", approvedByRole: "operator" });
    const after = run(approved, upstream(2));
    expect(after).toMatchObject({ state: "resync-required", generation: 2, resyncApproval: undefined });
  });

  it("fences the old generation: the primary's forwarder still presenting it is stale, even from the same identity", () => {
    const after = fold(VM, ...upTo(2), upstream(3));
    expect(() => recogniseCurrentPrimary(after, { presentedGeneration: 1, peerIdentity: PRIMARY })).toThrow(StaleGenerationError);
    expect(() => recogniseCurrentPrimary(after, { presentedGeneration: 0, peerIdentity: PRIMARY })).toThrow(StaleGenerationError);
    expect(() => upstream(1)(after)).toThrow(StaleGenerationError);
    expect(recogniseCurrentPrimary(after, { presentedGeneration: 3, peerIdentity: PRIMARY })).toEqual([]);
  });

  it("refuses another identity, a declaration without a reason, and a site that failed over itself or holds no point", () => {
    const s = fold(VM, ...upTo(2));
    expect(() => upstream(2, "site-x")(s)).toThrow(UpstreamFailoverRefusedError);
    expect(() => upstream(2, "site-x")(s)).toThrow(/only that primary can move the generation/);
    expect(() => upstream(2, PRIMARY, " ")(s)).toThrow(/reason must be a non-empty string/);
    const failedHere = run(s, failedOverUnplanned());
    expect(() => upstream(5)(failedHere)).toThrow(/failed over at this site/);
    expect(() => upstream(5)(run(failedHere, (x) => completeFailover(x)))).toThrow(UpstreamFailoverRefusedError);
    const initial = fold(VM, enabled, initialStarted);
    expect(() => upstream(2)(initial)).toThrow(/initial replication/);
  });

  it("a pause stands; its resume asks for the resync", () => {
    const paused = fold(VM, ...upTo(2), (s) => pause(s, { reason: "WAN maintenance" }), upstream(2));
    expect(paused).toMatchObject({ state: "paused", generation: 2, pauseReason: "WAN maintenance" });
    expect(run(paused, (s) => resume(s))).toMatchObject({ state: "resync-required", generation: 2 });
  });

  it("without the declaration a generation above the current one stays refused (recogniseCurrentPrimary)", () => {
    const s = fold(VM, ...upTo(2));
    expect(() => recogniseCurrentPrimary(s, { presentedGeneration: 2, peerIdentity: PRIMARY })).toThrow(StaleGenerationError);
  });
});
