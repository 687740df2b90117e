import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { InvalidTransitionError, executeCommand, getSqliteEventStore, loadRelationship, pause, relationshipStream, resume, snapshotKeyOf } from "../../../src/ledger/index.js";
import { appendHistory, relationshipHistory } from "../../helpers/ledgerHistory.js";
import { armableBarrier, counting } from "../../unit/ledgerAge/counting.js";

const dir = mkdtempSync(join(tmpdir(), "qreplica-ledger-age-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("commands on an aged SQLite ledger, two connections", () => {
  it("warm folds and snapshots on both sides; a race between them is settled by the stream version", async () => {
    const path = join(dir, "race.sqlite");
    const a = getSqliteEventStore({ path });
    const b = getSqliteEventStore({ path });
    try {
      await appendHistory(a, "web1", relationshipHistory("web1", 3000).events);
      const barrier = armableBarrier(2);
      const ra = counting(barrier.wrap(a));
      const rb = counting(barrier.wrap(b));
      // Both fold (and one of them snapshots) before the race: the race is between warm folds.
      await loadRelationship(ra, "web1");
      await loadRelationship(rb, "web1");
      expect(await a.readSnapshot(snapshotKeyOf("web1"))).toBeDefined();
      ra.reset();
      rb.reset();
      barrier.arm();
      const results = await Promise.allSettled([executeCommand(ra, "web1", (s) => pause(s, { reason: "a" })), executeCommand(rb, "web1", (s) => pause(s, { reason: "b" }))]);
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      expect(results.filter((r) => r.status === "rejected").map((r) => (r as PromiseRejectedResult).reason)).toEqual([expect.any(InvalidTransitionError)]);
      // Warm: the winner read its anchor; the loser its anchor, then again with the winner's event.
      expect(ra.eventsRead + rb.eventsRead).toBe(1 + 1 + 2);
      // Each side sees the other's appends as its tail.
      await executeCommand(rb, "web1", (s) => resume(s));
      expect((await loadRelationship(ra, "web1")).state.state).toBe("replicating");
      const types = (await a.readStream(relationshipStream("web1"))).slice(-2).map((e) => e.type);
      expect(types).toEqual(["ReplicationPaused", "ReplicationResumed"]);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
