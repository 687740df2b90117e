import { RejectReason } from "../../gen/qreplica/v1/replication.js";
import { failCycle, resyncStartedMetadata, startInitialReplication, startResync, type CycleKind, type RelationshipState } from "../../ledger/index.js";
import type { PointWrite } from "../../storage/index.js";
import type { RelationshipDeps } from "./relationshipDeps.js";
import { RelationshipRefusal } from "./relationshipInputs.js";

/** A cycle a primary begins: its sequence number, kind, generation, cut-off and disks. */
export interface BeginCycleInput {
  vmId: string;
  seq: number;
  kind: CycleKind;
  generation: number;
  cutoffAt: Date;
  disks: Array<{ diskId: string; sizeBytes: number }>;
}

/** Checks the cycle against the relationship and opens its partial point in storage. */
export async function beginCycle(deps: RelationshipDeps, input: BeginCycleInput): Promise<PointWrite> {
  const { vmId, seq } = input;
  let state = await deps.load(vmId);
  if (input.generation !== state.generation) {
    throw new RelationshipRefusal(RejectReason.REJECT_REASON_STALE_GENERATION, `generation ${input.generation} is stale (current ${state.generation})`, state.generation);
  }
  if (input.kind === "resync" && state.points.length === 0) {
    // The first point of a reverse replication: a full point over the seeds.
    const seeds = deps.storage.loadSeeds(vmId);
    if (state.state === "initial-replication-in-progress" && state.inFlight && state.inFlight.cycleSeq !== seq) {
      const stale = state.inFlight.cycleSeq;
      await deps.exec(vmId, (s) => failCycle(s, { cycleSeq: stale, generation: s.generation, reason: "INTERRUPTED", message: "superseded by a new resynchronisation" }));
    }
    await deps.exec(vmId, (s) => startInitialReplication(s, { cycleSeq: seq, cutoffAt: input.cutoffAt.toISOString(), generation: input.generation }));
    return deps.storage.beginPoint(
      vmId,
      seq,
      input.disks.map((d) => {
        const seedImage = seeds.find((x) => x.diskId === d.diskId)?.imagePath;
        // Over a seed, the hashes start from the seed's, which the comparison computes.
        return { diskId: d.diskId, sizeBytes: d.sizeBytes, seedImage, hashBase: seedImage ? { kind: "pending" as const } : { kind: "empty" as const } };
      }),
    );
  }
  if (input.kind === "resync") return beginResync(deps, input, state);
  if (input.kind === "full") {
    if (state.state === "initial-replication-in-progress" && state.inFlight && state.inFlight.cycleSeq !== seq) {
      // An initial replication interrupted by a crash of either side: record it as failed first.
      const stale = state.inFlight.cycleSeq;
      state = (await deps.exec(vmId, (s) => failCycle(s, { cycleSeq: stale, generation: s.generation, reason: "INTERRUPTED", message: "superseded by a new initial replication" })))
        .newState;
    }
    await deps.exec(vmId, (s) => startInitialReplication(s, { cycleSeq: seq, cutoffAt: input.cutoffAt.toISOString(), generation: input.generation }));
    return deps.storage.beginPoint(
      vmId,
      seq,
      input.disks.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes, hashBase: { kind: "empty" as const } })),
    );
  }
  if (input.kind !== "incremental") throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, `${input.kind} cycles are not supported yet`);
  if (state.state !== "replicating") {
    throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, `VM ${vmId} is in state ${state.state}; incremental cycles need replicating`);
  }
  if (seq <= state.lastCycleSeq) {
    throw new RelationshipRefusal(RejectReason.REJECT_REASON_OUT_OF_ORDER, `cycle ${seq} is not after the last cycle ${state.lastCycleSeq}`);
  }
  const latest = state.points[state.points.length - 1];
  if (!latest) throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, `VM ${vmId} has no recovery point to build on`);
  const disks = input.disks.map((d) => {
    const parent = latest.disks.find((p) => p.diskId === d.diskId);
    if (!parent) throw new RelationshipRefusal(RejectReason.REJECT_REASON_UNKNOWN_DISK, `disk '${d.diskId}' is not replicated for VM ${vmId}`);
    return { diskId: d.diskId, sizeBytes: d.sizeBytes, parentImage: parent.imagePath, hashBase: { kind: "point" as const, seq: latest.cycleSeq } };
  });
  return deps.storage.beginPoint(vmId, seq, disks);
}

/**
 * A resync after the primary lost change tracking: one more point over the newest one, holding
 * the chunks that differ from it; every older point stays as it was.
 */
async function beginResync(
  deps: RelationshipDeps,
  input: { vmId: string; seq: number; generation: number; cutoffAt: Date; disks: Array<{ diskId: string; sizeBytes: number }> },
  state: RelationshipState,
): Promise<PointWrite> {
  const { vmId, seq } = input;
  if (state.state === "resynchronising" && state.inFlight && state.inFlight.cycleSeq !== seq) {
    const stale = state.inFlight.cycleSeq;
    state = (await deps.exec(vmId, (s) => failCycle(s, { cycleSeq: stale, generation: s.generation, reason: "INTERRUPTED", message: "superseded by a new resynchronisation" })))
      .newState;
  }
  const latest = state.points[state.points.length - 1];
  if (!latest) throw new RelationshipRefusal(RejectReason.REJECT_REASON_INVALID_STATE, `VM ${vmId} has no recovery point to resynchronise against`);
  const disks = input.disks.map((d) => {
    const parent = latest.disks.find((p) => p.diskId === d.diskId);
    if (!parent) throw new RelationshipRefusal(RejectReason.REJECT_REASON_UNKNOWN_DISK, `disk '${d.diskId}' is not replicated for VM ${vmId}`);
    // The comparison hashes (the parent's) become this point's base as they are sent.
    return { diskId: d.diskId, sizeBytes: d.sizeBytes, parentImage: parent.imagePath, hashBase: { kind: "pending" as const } };
  });
  // An operator's go-ahead (ResyncApproved) is named by the ResyncStarted it leads to, taken from
  // the state the command decides on: an approval may land after `state` was read.
  await deps.exec(vmId, (s) => startResync(s, { cycleSeq: seq, cutoffAt: input.cutoffAt.toISOString(), generation: input.generation }), { metadata: resyncStartedMetadata });
  return deps.storage.beginPoint(vmId, seq, disks);
}

/**
 * What a resync compares against, per disk: the newest point's image read through its backing
 * chain (that point's full content), or for a reverse replication's first point the seed.
 */
export async function comparisonImages(deps: RelationshipDeps, vmId: string): Promise<Array<{ diskId: string; imagePath: string; pointSeq?: number }>> {
  const state = await deps.load(vmId);
  const latest = state.points.filter((p) => !p.merging).at(-1) ?? state.points.at(-1);
  if (state.state === "resynchronising" && latest) return latest.disks.map((d) => ({ diskId: d.diskId, imagePath: d.imagePath, pointSeq: latest.cycleSeq }));
  return deps.storage.loadSeeds(vmId);
}
