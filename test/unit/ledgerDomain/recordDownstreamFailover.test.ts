/** Extended replication, on B: a planned failover at C went through B; A's agent is fenced at B until C reverses onto it. */
import { describe, expect, it } from "vitest";
import {
  InvalidCommandInputError,
  InvalidTransitionError,
  StaleGenerationError,
  commitCycle,
  pause,
  recogniseCurrentPrimary,
  recordDownstreamFailover,
  refuseStaleGeneration,
  replacePrimary,
  resume,
  type Decide,
  type RecordDownstreamFailoverInput,
} from "../../../src/ledger/index.js";
import { caught, cycleInput, enabled, failedOverUnplanned, fold, incremental, initialCommitted, initialStarted, run } from "./fixtures.js";

const PRIMARY = "agent.site-a.example";

const atC =
  (overrides: Partial<RecordDownstreamFailoverInput> = {}): Decide =>
  (s) =>
    recordDownstreamFailover(s, {
      targetSiteId: "site-c",
      pointId: s.points.at(-1)?.pointId ?? "none",
      targetPointId: "rp-c-9",
      primaryStoppedAt: "2026-12-05T10:00:00.000Z",
      stopMethod: "acpi",
      requestedBy: "ops-c",
      requestedByRole: "operator",
      recordedAt: "2026-12-05T10:00:02.000Z",
      ...overrides,
    });

const replica = () => fold("vm1", enabled, initialStarted, initialCommitted, incremental(2));

describe("recordDownstreamFailover", () => {
  it("fences the primary at its own generation, pauses with a reason naming the reverse from C, and keeps the points", async () => {
    const before = replica();
    const after = run(before, atC());
    expect(after).toMatchObject({ state: "paused", generation: before.generation, primarySiteId: "site-a", primaryIdentity: PRIMARY });
    expect(after.points).toEqual(before.points);
    expect(after.downstreamFailover).toMatchObject({
      targetSiteId: "site-c",
      pointId: before.points.at(-1)!.pointId,
      targetPointId: "rp-c-9",
      requestedBy: "ops-c",
      primaryIdentity: PRIMARY,
      generation: 1,
    });
    expect(after.pauseReason).toMatch(/VM vm1 failed over at site site-c \(asked by ops-c\).*qreplica reverse vm1 --dir .* --to-dir /);

    // A's agent, at its generation or any other, is stale: refused (and the refusal recordable), never acknowledged.
    expect(() => recogniseCurrentPrimary(after, { presentedGeneration: 0, peerIdentity: PRIMARY })).toThrow(StaleGenerationError);
    expect(run(after, (s) => refuseStaleGeneration(s, { presentedGeneration: 1, peerIdentity: PRIMARY })).counters.staleGenerationRefusals).toBe(1);
    // No cycle from it is committed, and no resume takes it back.
    expect(await caught(() => run(after, (s) => commitCycle(s, cycleInput("vm1", 3))))).toBeInstanceOf(InvalidTransitionError);
    expect(await caught(() => run(after, (s) => resume(s)))).toBeInstanceOf(InvalidCommandInputError);

    // The reverse from C takes it from here, and ends the fencing record.
    const reversed = run(after, (s) => replacePrimary(s, { primarySiteId: "site-c", primaryIdentity: "site-c", generation: 2, approvedBy: "admin-c", approvedByRole: "admin" }));
    expect(reversed).toMatchObject({ state: "resync-required", primarySiteId: "site-c", generation: 2 });
    expect(reversed.downstreamFailover).toBeUndefined();
    expect(reversed.pauseReason).toBeUndefined();
  });

  it("is accepted from an operator's pause too", () => {
    const paused = run(replica(), (s) => pause(s, { reason: "maintenance" }));
    expect(run(paused, atC()).downstreamFailover?.targetSiteId).toBe("site-c");
  });

  it("is refused before any point, once failed over here, twice, for an unknown point, and for this site or the primary", async () => {
    expect(await caught(() => run(fold("vm1", enabled), atC()))).toBeInstanceOf(InvalidTransitionError);
    expect(await caught(() => run(fold("vm1", enabled, initialStarted), atC()))).toBeInstanceOf(InvalidTransitionError);
    expect(await caught(() => run(run(replica(), failedOverUnplanned()), atC()))).toBeInstanceOf(InvalidTransitionError);
    expect(await caught(() => run(run(replica(), atC()), atC()))).toBeInstanceOf(InvalidCommandInputError);
    expect(await caught(() => run(replica(), atC({ pointId: "rp-unknown" })))).toBeInstanceOf(InvalidCommandInputError);
    expect(await caught(() => run(replica(), atC({ targetSiteId: "site-b" })))).toBeInstanceOf(InvalidCommandInputError);
    expect(await caught(() => run(replica(), atC({ targetSiteId: "site-a" })))).toBeInstanceOf(InvalidCommandInputError);
  });
});
