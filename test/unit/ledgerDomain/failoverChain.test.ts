/**
 * A completed failover's VM runs on its point's chain: the relationship keeps those images (a site
 * restart must not take them for orphans), through reverse replication too.
 */
import { describe, expect, it } from "vitest";
import { completeFailover, startReverseReplication } from "../../../src/ledger/index.js";
import { enabled, failedOverUnplanned, fold, image, incremental, initialCommitted, initialStarted, run } from "./fixtures.js";

describe("failoverChainImages", () => {
  it("lists the failed-over point's chain once completed, and keeps it after reverse replication starts", () => {
    const waiting = fold("web1", enabled, initialStarted, initialCommitted, incremental(2), incremental(3), failedOverUnplanned());
    expect(waiting.failoverChainImages).toBeUndefined();
    const done = run(waiting, (s) => completeFailover(s));
    expect(done.points).toEqual([]);
    for (const disk of ["disk0", "disk1"]) {
      for (const seq of [1, 2, 3]) expect(done.failoverChainImages).toContain(image("web1", disk, seq));
    }
    const reversed = run(done, (s) => startReverseReplication(s, { newPrimarySiteId: done.replicaSiteId!, newPrimaryIdentity: "site-b" }));
    expect(reversed.failoverChainImages).toEqual(done.failoverChainImages);
  });
});
