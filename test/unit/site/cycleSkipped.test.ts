/** The site's side of CycleSkipped: a stale primary's report touches nothing; repeats record nothing. */
import { describe, expect, it } from "vitest";
import { silentLogger } from "../../../src/common/logger.js";
import { executeCommand, getInMemoryEventStore, loadRelationship } from "../../../src/ledger/index.js";
import { Relationships } from "../../../src/site/relationships/relationships.js";
import type { ReplicaStorage } from "../../../src/storage/index.js";
import { cutoff, enabled, incremental, initialCommitted, initialStarted } from "../ledgerDomain/fixtures.js";

const VM = "web1";

describe("Relationships.recordCycleSkipped", () => {
  it("records once per code for the current generation, ignores other generations and unknown VMs", async () => {
    const store = getInMemoryEventStore();
    for (const d of [enabled, initialStarted, initialCommitted, incremental(2)]) await executeCommand(store, VM, d);
    // Storage plays no part in recording a skipped cycle.
    const relationships = new Relationships(store, {} as ReplicaStorage, { siteId: "site-b", defaultMaxPoints: 3 }, silentLogger);
    const report = (generation: number, vmId = VM) =>
      relationships.recordCycleSkipped({ vmId, generation, code: "SCRATCH_SPACE_LOW", message: "scratch /s has 1.0 MiB free", skippedAt: new Date(cutoff(3)) });

    expect(await report(0)).toBe(false);
    expect(await report(2)).toBe(false);
    expect(await report(1, "nosuch")).toBe(false);
    expect((await loadRelationship(store, VM)).state.cycleSkipped).toBeUndefined();
    expect(await report(1)).toBe(true);
    expect(await report(1)).toBe(false);
    expect((await store.readAll({})).filter((e) => e.type === "CycleSkipped")).toHaveLength(1);
    expect((await loadRelationship(store, VM)).state.cycleSkipped?.code).toBe("SCRATCH_SPACE_LOW");
  });
});
