import { InvalidCommandInputError, OutOfOrderCycleError } from "../errors.js";
import { judgeSample, type EncryptionBaseline } from "../encryptionSignal.js";
import { pointIdFor, relationshipEvent, type CycleKind, type DiskCompression, type PointGroup, type RelationshipEvent, type RelationshipEventData } from "../events.js";
import { requireConsistency, requireCount, requireEnabled, requireGeneration, requireNextCycle, requirePointDisks, requireState, requireTime } from "../guards.js";
import type { RelationshipState } from "../relationship.js";
import type { ReplicationStateName } from "../states.js";

/** What the site commits: the CycleCommitted event's own fields, and what goes into the point's event. */
export type CommitCycleInput = RelationshipEventData["CycleCommitted"] & {
  /** The policy's lock on this point, if it has one (ISO time). */
  lockedUntil?: string;
  /** The consistency group cut-off the point was cut in. */
  group?: PointGroup;
};

const COMMAND = "commitCycle";

/**
 * Each kind of cycle belongs to its states; a mismatch means the sender is confused. Incremental
 * cycles are still accepted once a planned failover is prepared: the stopped primary's final
 * cycle is what lets the planned failover lose nothing (see prepareFailover).
 */
const STATES_FOR_KIND: Record<CycleKind, readonly ReplicationStateName[]> = {
  full: ["initial-replication-in-progress"],
  incremental: ["replicating", "prepared-for-planned-failover"],
  resync: ["resynchronising"],
};

/**
 * Called only once the point's data is durable on the replica; the events returned are appended
 * in one append, so a point is recorded together with its cycle or not at all (invariant 5).
 */
export function commitCycle(s: RelationshipState, input: CommitCycleInput): RelationshipEvent[] {
  const kind = input.kind;
  if (kind !== "full" && kind !== "incremental" && kind !== "resync") {
    throw new InvalidCommandInputError(`${COMMAND}: kind must be full, incremental or resync, got ${String(kind)}`);
  }
  const cycleSeq = requireCount(COMMAND, "cycleSeq", input.cycleSeq, 1);
  const generation = requireCount(COMMAND, "generation", input.generation, 1);
  const cutoffAt = requireTime(COMMAND, "cutoffAt", input.cutoffAt);
  const committedAt = requireTime(COMMAND, "committedAt", input.committedAt);
  const consistency = requireConsistency(COMMAND, input.consistency);
  const stats = {
    dataBytes: requireCount(COMMAND, "dataBytes", input.dataBytes),
    zeroBytes: requireCount(COMMAND, "zeroBytes", input.zeroBytes),
    wireBytes: requireCount(COMMAND, "wireBytes", input.wireBytes),
    extents: requireCount(COMMAND, "extents", input.extents),
    durationMs: requireCount(COMMAND, "durationMs", input.durationMs),
    ...(input.comparedBytes ? { comparedBytes: requireCount(COMMAND, "comparedBytes", input.comparedBytes) } : {}),
    ...(input.importedBytes ? { importedBytes: requireCount(COMMAND, "importedBytes", input.importedBytes) } : {}),
    ...(input.diskDataBytes ? { diskDataBytes: requireDiskCounts(input.diskDataBytes, input.dataBytes) } : {}),
    ...(input.diskCompression ? { diskCompression: requireCompression(input.diskCompression, input.diskDataBytes) } : {}),
  };
  const lock = input.lockedUntil === undefined ? {} : { lockedUntil: requireTime(COMMAND, "lockedUntil", input.lockedUntil) };
  const group = input.group === undefined ? {} : { group: requireGroup(s.vmId, input.group) };

  const command = `${COMMAND}(${kind})`;
  requireEnabled(s, command, STATES_FOR_KIND[kind]);
  // Before the state check: an old primary talking to a failed-over VM must hear "stale".
  requireGeneration(s, generation);
  requireState(s, command, STATES_FOR_KIND[kind], hintFor(s, kind));
  const disks = requirePointDisks(COMMAND, s, input.disks);
  if (kind === "incremental") {
    requireNextCycle(s, cycleSeq);
  } else if (s.inFlight?.cycleSeq !== cycleSeq) {
    throw new OutOfOrderCycleError(s.vmId, cycleSeq, s.lastCycleSeq, s.inFlight?.cycleSeq);
  }
  if (cutoffAt > committedAt) {
    throw new InvalidCommandInputError(`${COMMAND}: cycle ${cycleSeq} is committed at ${committedAt}, before its cut-off ${cutoffAt}`);
  }
  const lastPoint = s.points.at(-1);
  if (lastPoint && cutoffAt < lastPoint.cutoffAt) {
    throw new InvalidCommandInputError(`${COMMAND}: cycle ${cycleSeq} has cut-off ${cutoffAt}, before the latest point ${lastPoint.pointId} (${lastPoint.cutoffAt})`);
  }

  if (input.quiesceFailure !== undefined && (consistency !== "crash" || typeof input.quiesceFailure !== "string" || input.quiesceFailure === "")) {
    throw new InvalidCommandInputError(`${COMMAND}: quiesceFailure is a non-empty reason, and only on a crash-consistent point`);
  }
  const quiesce = input.quiesceFailure === undefined ? {} : { quiesceFailure: input.quiesceFailure };
  const pointId = pointIdFor(cycleSeq);
  const events: RelationshipEvent[] = [
    relationshipEvent("CycleCommitted", { cycleSeq, kind, generation, cutoffAt, committedAt, consistency, ...quiesce, disks, ...stats }),
    relationshipEvent("RecoveryPointCreated", { pointId, cycleSeq, cutoffAt, consistency, disks, ...lock, ...group }),
  ];
  const suspected = suspectDisks(s, stats.diskCompression, stats.diskDataBytes);
  if (suspected) events.push(relationshipEvent("RecoveryPointSuspected", { pointId, cycleSeq, cutoffAt, ...suspected }));
  if (kind === "full") events.push(relationshipEvent("InitialReplicationCompleted", { cycleSeq, pointId }));
  if (kind === "resync") events.push(relationshipEvent("ResyncCompleted", { cycleSeq, pointId }));
  return events;
}

/** A group cut-off: named, with the VM among its members (the primary's word, kept as given otherwise). */
function requireGroup(vmId: string, g: PointGroup): PointGroup {
  const named = (x: unknown) => typeof x === "string" && x.length > 0 && x.length <= 200;
  if (!named(g.groupId) || !named(g.cutoffId) || !Array.isArray(g.members) || !g.members.every(named) || !g.members.includes(vmId)) {
    throw new InvalidCommandInputError(`${COMMAND}: group must name the group, its cut-off and its members (VM ${vmId} among them)`);
  }
  if (g.pauseMs !== undefined && !(Number.isFinite(g.pauseMs) && g.pauseMs >= 0)) throw new InvalidCommandInputError(`${COMMAND}: group pauseMs must be a non-negative number`);
  return { groupId: g.groupId, cutoffId: g.cutoffId, members: [...g.members], ...(g.pauseMs !== undefined ? { pauseMs: g.pauseMs } : {}) };
}

/** Per-disk counts: whole numbers that add up to the cycle's total. */
function requireDiskCounts(byDisk: Record<string, number>, total: number): Record<string, number> {
  const counts: Record<string, number> = {};
  let sum = 0;
  for (const [diskId, n] of Object.entries(byDisk)) sum += counts[diskId] = requireCount(COMMAND, `diskDataBytes.${diskId}`, n);
  if (sum !== total) throw new InvalidCommandInputError(`${COMMAND}: diskDataBytes add up to ${sum}, not the cycle's dataBytes ${total}`);
  return counts;
}

function requireCompression(byDisk: Record<string, DiskCompression>, dataBytes: Record<string, number> | undefined): Record<string, DiskCompression> {
  if (!dataBytes) throw new InvalidCommandInputError(`${COMMAND}: diskCompression needs diskDataBytes`);
  const out: Record<string, DiskCompression> = {};
  for (const [diskId, c] of Object.entries(byDisk)) {
    const incompressibleBytes = requireCount(COMMAND, `diskCompression.${diskId}.incompressibleBytes`, c?.incompressibleBytes);
    const wireBytes = requireCount(COMMAND, `diskCompression.${diskId}.wireBytes`, c?.wireBytes);
    if (incompressibleBytes > (dataBytes[diskId] ?? 0)) {
      throw new InvalidCommandInputError(`${COMMAND}: disk ${diskId} has ${incompressibleBytes} incompressible bytes, more than its ${dataBytes[diskId] ?? 0} data bytes`);
    }
    out[diskId] = { incompressibleBytes, wireBytes };
  }
  return out;
}

/** The disks whose share of incompressible bytes jumped (encryptionSignal.ts), with their baselines before this point. */
function suspectDisks(
  s: RelationshipState,
  compression: Record<string, DiskCompression> | undefined,
  dataBytes: Record<string, number> | undefined,
): { disks: { diskId: string; share: number; baselineShare: number }[]; baselines: Record<string, EncryptionBaseline> } | undefined {
  if (!compression || !dataBytes) return undefined;
  const disks: { diskId: string; share: number; baselineShare: number }[] = [];
  const baselines: Record<string, EncryptionBaseline> = {};
  for (const [diskId, c] of Object.entries(compression)) {
    const baseline = s.encryptionBaselines[diskId];
    const verdict = judgeSample(baseline, { dataBytes: dataBytes[diskId] ?? 0, incompressibleBytes: c.incompressibleBytes });
    if (verdict.kind !== "suspect" || !baseline) continue;
    disks.push({ diskId, share: round(verdict.share), baselineShare: round(verdict.baselineShare) });
    baselines[diskId] = baseline;
  }
  return disks.length > 0 ? { disks, baselines } : undefined;
}

const round = (x: number) => Math.round(x * 10_000) / 10_000;

function hintFor(s: RelationshipState, kind: CycleKind): string | undefined {
  if (kind === "incremental" && s.state === "initial-replication-in-progress") {
    return "Only the full initial cycle can be committed until the initial replication completes.";
  }
  if (kind !== "incremental" && (s.state === "replicating" || s.state === "prepared-for-planned-failover")) {
    return `VM ${s.vmId} is already in sync; send an incremental cycle.`;
  }
  return undefined;
}
