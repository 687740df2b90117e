/**
 * `resync: manual` waits for an operator only where a protected VM lost its change tracking; an
 * initial replication the primary never saw finish (its enabling cycle's ack was lost) goes on by
 * itself, whatever the mode.
 */
import { describe, expect, it } from "vitest";
import {
  approveResync,
  cancelFailover,
  commitCycle,
  completeFailover,
  continuesInitialReplication,
  failCycle,
  markResyncRequired,
  resyncGoAhead,
  startInitialReplication,
  startResync,
  startReverseReplication,
  type Decide,
  type RelationshipState,
} from "../../../src/ledger/index.js";
import { ENABLE_UNACKNOWLEDGED } from "../../../src/model/index.js";
import { cutoff, cycleInput, enabled, failedOverUnplanned, fold, incremental, initialCommitted, initialStarted, run } from "./fixtures.js";

const VM = "web1";
const unacked = [
  { diskId: "disk0", code: ENABLE_UNACKNOWLEDGED },
  { diskId: "disk1", code: ENABLE_UNACKNOWLEDGED },
];
const required =
  (reason: string): Decide =>
  (s) =>
    markResyncRequired(s, { reason });
const resyncStarted =
  (seq: number): Decide =>
  (s) =>
    startResync(s, { cycleSeq: seq, cutoffAt: cutoff(seq), generation: s.generation });
const resyncCommitted =
  (seq: number): Decide =>
  (s) =>
    commitCycle(s, cycleInput(VM, seq, "resync", { generation: s.generation }));
const manual = (s: RelationshipState, lost: ReadonlyArray<{ diskId: string; code: string }>) => resyncGoAhead(s, { lost, mode: "manual" });

/** The initial point committed, its ack lost: the site marks the loss the agent reports. */
const initialAckLost = (): RelationshipState => fold(VM, enabled, initialStarted, initialCommitted, required("disk0: ENABLE_UNACKNOWLEDGED (cycle 1 ...)"));

describe("resyncGoAhead with resync: manual", () => {
  it("an initial replication whose ack was lost goes on without an operator", () => {
    const s = initialAckLost();
    expect(s.state).toBe("resync-required");
    expect(s.points).toHaveLength(1);
    expect(s.incrementalSinceInitial).toBe(false);
    expect(continuesInitialReplication(s, unacked)).toBe(true);
    expect(manual(s, unacked)).toBe("resync");
  });

  it("so does its continuation when that is interrupted too (not committed, or committed and its ack lost), until an incremental proves tracking", () => {
    let s = run(initialAckLost(), resyncStarted(2));
    s = run(s, (x) => failCycle(x, { cycleSeq: 2, generation: 1, reason: "INTERRUPTED", message: "site restarted" }));
    expect(manual(s, unacked)).toBe("resync");
    s = run(s, resyncStarted(3));
    s = run(s, resyncCommitted(3));
    expect(s.state).toBe("replicating");
    s = run(s, required("disk0: ENABLE_UNACKNOWLEDGED (cycle 3 ...)"));
    expect(manual(s, unacked)).toBe("resync");
    // The first incremental: from now on the VM is protected, and a loss is a real resync.
    s = run(s, resyncStarted(4));
    s = run(s, resyncCommitted(4));
    s = run(s, incremental(5));
    expect(s.incrementalSinceInitial).toBe(true);
    s = run(s, required("disk0: ENABLE_UNACKNOWLEDGED (cycle 6 ...)"));
    expect(manual(s, unacked)).toBe("wait");
  });

  it("a real loss of tracking waits for the operator, even right after the initial replication", () => {
    // Acked initial, then QEMU crashed before the first incremental: its bitmap is gone.
    const crashed = fold(VM, enabled, initialStarted, initialCommitted, required("disk0: BITMAP_MISSING"));
    expect(
      manual(crashed, [
        { diskId: "disk0", code: "BITMAP_MISSING" },
        { diskId: "disk1", code: "BITMAP_MISSING" },
      ]),
    ).toBe("wait");
    // The agent lost its state directory: nothing says an enable was merely unacknowledged.
    expect(manual(crashed, [{ diskId: "disk0", code: "NOT_ENABLED" }])).toBe("wait");
    // One disk only unacknowledged is not enough: the other lost tracking for real.
    expect(manual(initialAckLost(), [unacked[0]!, { diskId: "disk1", code: "BITMAP_INCONSISTENT" }])).toBe("wait");
    // No report at all (a Hello after the loss was recorded, from an agent that reports nothing).
    expect(manual(initialAckLost(), [])).toBe("wait");
    // A protected VM (incrementals committed) with an unacknowledged enable: an approved resync's ack was lost.
    const protectedVm = fold(VM, enabled, initialStarted, initialCommitted, incremental(2), required("disk0: BITMAP_MISSING"));
    expect(manual(protectedVm, unacked)).toBe("wait");
  });

  it("an operator's go-ahead, or automatic mode, resyncs in every case", () => {
    const protectedVm = fold(VM, enabled, initialStarted, initialCommitted, incremental(2), required("disk0: BITMAP_MISSING"));
    const lost = [{ diskId: "disk0", code: "BITMAP_MISSING" }];
    expect(resyncGoAhead(protectedVm, { lost, mode: "automatic" })).toBe("resync");
    const approved = run(protectedVm, (s) => approveResync(s, { approvedBy: "ops-alice", approvedByRole: "operator" }));
    expect(manual(approved, lost)).toBe("resync");
  });

  it("a reverse replication starts a new initial replication: its interrupted first point goes on by itself too", () => {
    let s = fold(VM, enabled, initialStarted, initialCommitted, incremental(2), failedOverUnplanned(), completeFailover);
    expect(s.incrementalSinceInitial).toBe(true);
    s = run(s, (x) => startReverseReplication(x, { newPrimarySiteId: "site-b", newPrimaryIdentity: "agent.site-b.example" }));
    expect(s.incrementalSinceInitial).toBe(false);
    s = run(s, (x) => startInitialReplication(x, { cycleSeq: 3, cutoffAt: cutoff(3), generation: x.generation }));
    s = run(s, (x) => commitCycle(x, cycleInput(VM, 3, "full", { generation: x.generation })));
    s = run(s, required("disk0: ENABLE_UNACKNOWLEDGED (cycle 3 ...)"));
    expect(manual(s, unacked)).toBe("resync");
    // A cancelled failover leaves the relationship as it was: protected.
    const cancelled = fold(VM, enabled, initialStarted, initialCommitted, incremental(2), failedOverUnplanned(), cancelFailover);
    expect(cancelled.incrementalSinceInitial).toBe(true);
  });
});
