/**
 * Extended replication (A -> B -> C), at C: the VM failed over at C, and B's agent (B failed over
 * too) then declares its failover upstream. Two sites would run the VM: C's failover stands and
 * B's agent is refused as stale (which fences its VM), whether its generation is above C's or equal
 * to it (both counted one up from the generation C last told B).
 */
import { describe, expect, it } from "vitest";
import { silentLogger } from "../../../src/common/logger.js";
import { RejectReason } from "../../../src/gen/qreplica/v1/replication.js";
import { executeCommand, getInMemoryEventStore, loadRelationship, type Decide } from "../../../src/ledger/index.js";
import { Relationships } from "../../../src/site/relationships/relationships.js";
import type { ReplicaStorage } from "../../../src/storage/index.js";
import { enableInput, enabled, failedOverUnplanned, incremental, initialCommitted, initialStarted } from "../ledgerDomain/fixtures.js";

const VM = "web1";
const PRIMARY = enableInput().primaryIdentity;
const REASON = "VM web1 failed over at site site-b (unplanned, to point p2, generation 2 there)";

async function failedOverAtC() {
  const store = getInMemoryEventStore();
  for (const d of [enabled, initialStarted, initialCommitted, incremental(2), failedOverUnplanned()] as Decide[]) await executeCommand(store, VM, d);
  // The Hello is refused before any storage is touched.
  const relationships = new Relationships(store, {} as ReplicaStorage, { siteId: "site-c", defaultMaxPoints: 24 }, silentLogger);
  return { store, relationships, generation: (await loadRelationship(store, VM)).state.generation };
}

const hello = (presentedGeneration: number) => ({
  vmId: VM,
  primarySiteId: "site-a",
  primaryIdentity: PRIMARY,
  presentedGeneration,
  disks: enableInput().disks,
  upstreamFailover: REASON,
});

describe("a failover upstream declared after a failover here", () => {
  it("at this site's own generation: refused as stale (the agent fences its VM), not accepted as the current primary", async () => {
    const { relationships, generation } = await failedOverAtC();
    await expect(relationships.acceptHello(hello(generation))).rejects.toMatchObject({
      reason: RejectReason.REJECT_REASON_STALE_GENERATION,
      message: expect.stringMatching(/failed over at this site .*fences its VM.*cancel/),
    });
  });

  it("above it: refused as stale too, and the refusal recorded", async () => {
    const { store, relationships, generation } = await failedOverAtC();
    await expect(relationships.acceptHello(hello(generation + 1))).rejects.toMatchObject({ reason: RejectReason.REJECT_REASON_STALE_GENERATION });
    const after = (await loadRelationship(store, VM)).state;
    expect(after.generation).toBe(generation);
    expect(after.counters.staleGenerationRefusals).toBe(1);
  });
});
