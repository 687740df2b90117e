/**
 * How `qreplica wait` and the other waiting commands turn the site's answers into progress lines:
 * growing bytes, the commit with the cycle's whole size, a cycle that ended without a point, and a
 * point that came and went between two polls. The site is a scripted list of GetStatus answers.
 */
import { PassThrough } from "node:stream";
import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { CycleKind, Consistency } from "../../../src/gen/qreplica/v1/common.js";
import {
  RelationshipState,
  ReplicationHealth,
  type ControlServiceClient,
  type GetStatusResponse,
  type RecoveryPoint,
  type RelationshipStatus,
} from "../../../src/gen/qreplica/v1/control.js";
import { watchCycles } from "../../../src/cli/cycleWatch.js";
import { progressReporter } from "../../../src/cli/progress.js";

const MiB = 1024 * 1024;

function rel(o: Partial<RelationshipStatus>): RelationshipStatus {
  return {
    vmId: "vm1",
    state: RelationshipState.RELATIONSHIP_STATE_INITIAL_REPLICATION_IN_PROGRESS,
    testFailoverActive: false,
    health: ReplicationHealth.REPLICATION_HEALTH_NORMAL,
    generation: 1n,
    primarySiteId: "a",
    replicaSiteId: "b",
    healthMessage: "",
    healthReasons: [],
    policyName: "",
    initialReplicationWait: "",
    ...o,
  };
}

const point = (seq: number, kind: CycleKind): RecoveryPoint => ({
  recoveryPointId: `rp-${seq}`,
  sequence: BigInt(seq),
  generation: 1n,
  cutoffTime: new Date(1000),
  committedAt: new Date(3000),
  consistency: Consistency.CONSISTENCY_CRASH,
  kind,
  disks: [{ diskId: "vda", virtualSizeBytes: BigInt(16 * MiB), changedBytes: BigInt(MiB), incompressibleBytes: 0n, transferredBytes: BigInt(MiB) }],
  changedBytes: BigInt(MiB),
  transferredBytes: BigInt(MiB),
  suspectDisks: [],
  lastClean: false,
  groupId: "",
  groupCutoffId: "",
  groupMembers: [],
  groupPauseMs: 0,
});

const inFlight = (seq: number, done: number, kind = CycleKind.CYCLE_KIND_INITIAL) => ({
  cycleSequence: BigInt(seq),
  kind,
  startedAt: new Date(0),
  bytesDone: BigInt(done),
  bytesTotal: BigInt(16 * MiB),
  wireBytes: BigInt(done),
});

/** A client whose GetStatus answers come from `answers`, one per call (undefined: NOT_FOUND). */
function scriptedSite(answers: Array<RelationshipStatus | undefined>): ControlServiceClient {
  let i = 0;
  const getStatus = (_req: unknown, _md: unknown, _opts: unknown, cb: (err: grpc.ServiceError | null, res?: GetStatusResponse) => void) => {
    const a = answers[Math.min(i++, answers.length - 1)];
    if (a) cb(null, { siteId: "b", relationships: [a] });
    else cb(Object.assign(new Error("no relationship"), { code: grpc.status.NOT_FOUND, details: "no relationship", metadata: new grpc.Metadata() }));
  };
  return { getStatus } as unknown as ControlServiceClient;
}

async function linesOf(answers: Array<RelationshipStatus | undefined>, until: (r: RelationshipStatus | undefined) => boolean) {
  const out = new PassThrough();
  let text = "";
  out.on("data", (d: Buffer) => (text += d.toString()));
  const reporter = progressReporter("lines", out as unknown as NodeJS.WriteStream);
  await watchCycles({ client: scriptedSite(answers), vm: "vm1", reporter, until, everyMs: 0 });
  reporter.stop();
  return text
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

const replicating = (r: RelationshipStatus | undefined) => r?.state === RelationshipState.RELATIONSHIP_STATE_REPLICATING;

describe("watchCycles", () => {
  it("reports growing bytes, then the commit with the cycle's whole size", async () => {
    const lines = await linesOf(
      [
        undefined,
        rel({ cycleInProgress: inFlight(1, 2 * MiB) }),
        rel({ cycleInProgress: inFlight(1, 2 * MiB) }),
        rel({ cycleInProgress: inFlight(1, 9 * MiB) }),
        rel({ state: RelationshipState.RELATIONSHIP_STATE_REPLICATING, lastRecoveryPoint: point(1, CycleKind.CYCLE_KIND_INITIAL) }),
      ],
      replicating,
    );
    expect(lines.map((l) => l.event)).toEqual(["phase", "phase", "progress", "progress", "phase", "committed"]);
    // An unchanged answer prints nothing.
    expect(lines.filter((l) => l.event === "progress").map((l) => l.bytesDone)).toEqual([2 * MiB, 9 * MiB]);
    expect(lines.at(-1)).toMatchObject({ kind: "initial", cycleSequence: 1, bytesDone: 16 * MiB, bytesTotal: 16 * MiB, recoveryPointId: "rp-1", seconds: 3 });
  });

  it("says when a cycle ended without a point, and reports a point it never saw in flight", async () => {
    const lines = await linesOf(
      [
        rel({ state: RelationshipState.RELATIONSHIP_STATE_REPLICATING, lastRecoveryPoint: point(1, CycleKind.CYCLE_KIND_INITIAL) }),
        rel({
          state: RelationshipState.RELATIONSHIP_STATE_REPLICATING,
          lastRecoveryPoint: point(1, CycleKind.CYCLE_KIND_INITIAL),
          cycleInProgress: inFlight(2, MiB, CycleKind.CYCLE_KIND_INCREMENTAL),
        }),
        rel({ state: RelationshipState.RELATIONSHIP_STATE_REPLICATING, lastRecoveryPoint: point(1, CycleKind.CYCLE_KIND_INITIAL), healthMessage: "cycle 2 failed" }),
        rel({ state: RelationshipState.RELATIONSHIP_STATE_REPLICATING, lastRecoveryPoint: point(2, CycleKind.CYCLE_KIND_RESYNC) }),
      ],
      (r) => r?.lastRecoveryPoint?.sequence === 2n,
    );
    const events = lines.filter((l) => l.event !== "phase");
    expect(events).toEqual([
      expect.objectContaining({ event: "progress", kind: "incremental", cycleSequence: 2 }),
      expect.objectContaining({ event: "cycle-ended", cycleSequence: 2, message: "cycle 2 failed" }),
      // Seen only once committed: a resync covers its disks' sizes; the baseline point 1 is not reported.
      expect.objectContaining({ event: "committed", kind: "resync", cycleSequence: 2, bytesTotal: 16 * MiB, seconds: 2 }),
    ]);
  });
});
