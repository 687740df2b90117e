/** Extended replication's reverse onto B: the site B forwarded to becomes the primary at a higher generation, points kept. */
import { describe, expect, it } from "vitest";
import { InvalidCommandInputError, InvalidTransitionError, StaleGenerationError, recogniseCurrentPrimary, replacePrimary, type Decide } from "../../../src/ledger/index.js";
import { caught, enabled, failedOverUnplanned, fold, incremental, initialCommitted, initialStarted, run } from "./fixtures.js";

const byC =
  (generation = 2): Decide =>
  (s) =>
    replacePrimary(s, { primarySiteId: "site-c", primaryIdentity: "site-c", generation, approvedBy: "admin-b", approvedByRole: "admin" });

describe("replacePrimary", () => {
  it("takes the new primary at its generation, keeps the points, and needs a resync approved by the operator", () => {
    const before = fold("vm1", enabled, initialStarted, initialCommitted, incremental(2));
    const after = run(before, byC());
    expect(after).toMatchObject({ state: "resync-required", generation: 2, primarySiteId: "site-c", primaryIdentity: "site-c" });
    expect(after.points.map((p) => p.pointId)).toEqual(before.points.map((p) => p.pointId));
    expect(after.resyncApproval).toEqual({ approvedBy: "admin-b", approvedByRole: "admin" });
    expect(after.formerPrimaryIdentities).toEqual([before.primaryIdentity]);
    // The old primary presenting its generation is stale: no GenerationAcknowledged for it.
    expect(() => recogniseCurrentPrimary(after, { presentedGeneration: 1, peerIdentity: before.primaryIdentity! })).toThrow(StaleGenerationError);
  });

  it("is refused without a higher generation, without points, for the current primary, and once failed over here", async () => {
    const replica = fold("vm1", enabled, initialStarted, initialCommitted);
    expect(await caught(() => run(replica, byC(1)))).toBeInstanceOf(InvalidCommandInputError);
    expect(await caught(() => run(fold("vm1", enabled), byC()))).toBeInstanceOf(InvalidTransitionError);
    const same: Decide = (s) => replacePrimary(s, { primarySiteId: "site-c", primaryIdentity: s.primaryIdentity!, generation: 2, approvedBy: "a", approvedByRole: "admin" });
    expect(await caught(() => run(replica, same))).toBeInstanceOf(InvalidCommandInputError);
    expect(await caught(() => run(run(replica, failedOverUnplanned()), byC(3)))).toBeInstanceOf(InvalidTransitionError);
  });
});
