/** The domain on the durable ledger: the same decisions, a real file, two connections racing. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  InvalidTransitionError,
  RecoveryPointsProjection,
  StatusProjection,
  executeCommand,
  getSqliteEventStore,
  loadRelationship,
  pause,
  startMerge,
  verifyLedger,
} from "../../../src/ledger/index.js";
import { baseImage, incremental, protect, raceBarrier } from "./fixtures.js";

const dir = mkdtempSync(join(tmpdir(), "qreplica-domain-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("relationship on the SQLite ledger", () => {
  it("runs the happy path, survives a reopen and verifies", async () => {
    const path = join(dir, "happy.db");
    const store = getSqliteEventStore({ path });
    await protect(store, "web1", { lastSeq: 6, maxPoints: 3 });
    const before = await loadRelationship(store, "web1");
    const statusBefore = (await StatusProjection.rebuild(store)).list(new Date("2025-03-01T11:00:00Z"));
    await store.close();

    const reopened = getSqliteEventStore({ path });
    try {
      const after = await loadRelationship(reopened, "web1");
      expect(after).toEqual(before);
      expect(after.state.state).toBe("replicating");
      expect(after.state.points.map((p) => p.pointId)).toEqual(["rp-4", "rp-5", "rp-6"]);
      expect((await RecoveryPointsProjection.rebuild(reopened, "web1")).get("rp-4")!.disks[1]!.chain).toEqual([baseImage("web1", "disk1")]);
      expect((await StatusProjection.rebuild(reopened)).list(new Date("2025-03-01T11:00:00Z"))).toEqual(statusBefore);
      expect((await verifyLedger(reopened)).ok).toBe(true);
    } finally {
      await reopened.close();
    }
  });

  it("settles two connections deciding at once by optimistic concurrency", async () => {
    const path = join(dir, "race.db");
    const setup = getSqliteEventStore({ path });
    await protect(setup, "vm", { lastSeq: 4, retention: false });
    await setup.close();

    const alice = getSqliteEventStore({ path });
    const bob = getSqliteEventStore({ path });
    try {
      // Both fold at the same version, then race: compatible decisions both land.
      const race = raceBarrier(2);
      const [merge, commit] = await Promise.all([executeCommand(race(alice), "vm", startMerge), executeCommand(race(bob), "vm", incremental(5))]);
      expect([merge.attempts, commit.attempts].sort()).toEqual([1, 2]);
      expect(merge.events).toHaveLength(1);
      expect(commit.events).toHaveLength(2);
      const { state } = await loadRelationship(alice, "vm");
      expect(state.points.map((p) => p.pointId)).toEqual(["rp-1", "rp-2", "rp-3", "rp-4", "rp-5"]);
      expect(state.points[0]!.merging).toBe(true);

      // Conflicting decisions: one pause wins, the other is refused on the new state.
      const race2 = raceBarrier(2);
      const results = await Promise.allSettled([
        executeCommand(race2(alice), "vm", (s) => pause(s, { reason: "alice" })),
        executeCommand(race2(bob), "vm", (s) => pause(s, { reason: "bob" })),
      ]);
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      expect(results.find((r) => r.status === "rejected")).toMatchObject({ reason: expect.any(InvalidTransitionError) });
      expect((await verifyLedger(alice)).ok).toBe(true);
    } finally {
      await alice.close();
      await bob.close();
    }
  });
});
