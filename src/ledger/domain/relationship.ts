/**
 * The replication relationship aggregate: the pure fold `evolve` over its state (relationshipState.ts).
 * Decisions live in `commands/`, one file per command; they read the state and return events,
 * never mutate it.
 */
import { nextBaseline, type EncryptionBaseline } from "./encryptionSignal.js";
import type { DiskCompression, RelationshipEvent } from "./events.js";
import type { ReplicationStateName } from "./states.js";
import { initialRelationshipState, type RecoveryPoint, type RelationshipState, type TestFailover } from "./relationshipState.js";

export * from "./relationshipState.js";

/**
 * Version of `evolve`'s meaning. Bump it whenever a change to `evolve`, to RelationshipState, or to
 * an upcaster in `decodeRelationshipEvent` would fold the same events into a different state:
 * stored snapshots of the old fold are then ignored and rebuilt from the events (a snapshot holds
 * the folded state, so the events before it are not decoded again). A field added to
 * RelationshipState whose initial value is right for every existing history needs no bump.
 */
// 2: FailoverCompleted keeps the failover VM's chain (failoverChainImages), which older snapshots lack.
// 3: a fence after a failover downstream names the cancel that lifts it (FailedOverDownstream's pause reason).
export const RELATIONSHIP_FOLD_VERSION = 3;
/**
 * Pure and total: the ledger is the authority, so an event is applied as recorded, never judged.
 * All checking happens in the commands before an event exists.
 */
export function evolve(s: RelationshipState, event: RelationshipEvent): RelationshipState {
  const c = s.counters;
  switch (event.type) {
    case "ReplicationEnabled": {
      const d = event.data;
      return {
        ...s,
        state: "ready-for-initial-replication",
        incrementalSinceInitial: false,
        generation: d.generation,
        primarySiteId: d.primarySiteId,
        replicaSiteId: d.replicaSiteId,
        primaryIdentity: d.primaryIdentity,
        disks: d.disks.map((x) => ({ diskId: x.diskId, sizeBytes: x.sizeBytes })),
        vmSpec: d.vmSpec,
        retention: { maxPoints: d.retention.maxPoints },
      };
    }
    case "InitialReplicationStarted":
      return {
        ...s,
        state: "initial-replication-in-progress",
        incrementalSinceInitial: false,
        inFlight: { cycleSeq: event.data.cycleSeq, kind: "full", cutoffAt: event.data.cutoffAt },
      };
    case "CycleCommitted": {
      const d = event.data;
      return {
        ...s,
        lastCycleSeq: Math.max(s.lastCycleSeq, d.cycleSeq),
        incrementalSinceInitial: s.incrementalSinceInitial || d.kind === "incremental",
        disks: d.disks.map((x) => ({ diskId: x.diskId, sizeBytes: x.sizeBytes })),
        lastCommittedAt: d.committedAt,
        // A cycle got through: whatever kept cycles from starting is over.
        cycleSkipped: undefined,
        quiesceFailure: d.quiesceFailure ? { cycleSeq: d.cycleSeq, at: d.cutoffAt, reason: d.quiesceFailure } : d.consistency === "application" ? undefined : s.quiesceFailure,
        encryptionBaselines: d.diskCompression ? foldBaselines(s.encryptionBaselines, d.diskCompression, d.diskDataBytes ?? {}) : s.encryptionBaselines,
        // A cycle in the current generation proves the primary adopted it.
        generationHandover: d.generation === s.generation ? undefined : s.generationHandover,
        counters: {
          ...c,
          cyclesCommitted: c.cyclesCommitted + 1,
          consecutiveFailures: 0,
          dataBytes: c.dataBytes + d.dataBytes,
          zeroBytes: c.zeroBytes + d.zeroBytes,
          wireBytes: c.wireBytes + d.wireBytes,
        },
      };
    }
    case "RecoveryPointCreated": {
      const d = event.data;
      const point: RecoveryPoint = {
        pointId: d.pointId,
        cycleSeq: d.cycleSeq,
        cutoffAt: d.cutoffAt,
        consistency: d.consistency,
        disks: d.disks.map((x) => ({ ...x })),
        merging: false,
        ...(d.lockedUntil ? { lockedUntil: d.lockedUntil } : {}),
        ...(d.group ? { group: { ...d.group, members: [...d.group.members] } } : {}),
      };
      return { ...s, points: [...s.points, point] };
    }
    case "RecoveryPointSuspected": {
      const d = event.data;
      return {
        ...s,
        // The suspect sample does not move its disk's baseline: restore the one before it.
        encryptionBaselines: { ...s.encryptionBaselines, ...d.baselines },
        suspectPoints: [...s.suspectPoints, { pointId: d.pointId, cycleSeq: d.cycleSeq, cutoffAt: d.cutoffAt, disks: d.disks.map((x) => ({ ...x })) }],
      };
    }
    case "SuspectPointsCleared": {
      const cleared = new Set(event.data.pointIds);
      return { ...s, suspectPoints: s.suspectPoints.filter((p) => !cleared.has(p.pointId)) };
    }
    case "VerificationDrillRecorded": {
      const d = event.data;
      const drill = {
        drillId: d.drillId,
        pointId: d.pointId,
        cutoffAt: d.cutoffAt,
        result: d.result,
        ...(d.failedCheck ? { failedCheck: d.failedCheck } : {}),
        ...(d.message ? { message: d.message } : {}),
        ...(d.timeToVerifiedMs !== undefined ? { timeToVerifiedMs: d.timeToVerifiedMs } : {}),
        finishedAt: d.finishedAt,
      };
      return { ...s, lastDrill: drill, lastVerified: d.result === "verified" ? drill : s.lastVerified };
    }
    case "InitialReplicationCompleted":
      return { ...s, state: "replicating", inFlight: undefined };
    case "CycleFailed": {
      const d = event.data;
      const failedInFlight = s.inFlight?.cycleSeq === d.cycleSeq;
      const state: ReplicationStateName = !failedInFlight
        ? s.state
        : s.state === "initial-replication-in-progress"
          ? "ready-for-initial-replication"
          : s.state === "resynchronising"
            ? "resync-required"
            : s.state;
      return {
        ...s,
        state,
        inFlight: failedInFlight ? undefined : s.inFlight,
        lastCycleSeq: Math.max(s.lastCycleSeq, d.cycleSeq),
        lastFailure: { cycleSeq: d.cycleSeq, reason: d.reason, message: d.message },
        counters: { ...c, cyclesFailed: c.cyclesFailed + 1, consecutiveFailures: c.consecutiveFailures + 1 },
      };
    }
    case "CycleSkipped":
      return { ...s, cycleSkipped: { code: event.data.code, message: event.data.message, since: event.data.skippedAt } };
    case "RecoveryPointMergeStarted":
      return {
        ...s,
        points: s.points.map((p) => (p.pointId === event.data.pointId ? { ...p, merging: true } : p)),
      };
    case "RecoveryPointMerged": {
      const d = event.data;
      const images = new Map(d.disks.map((x) => [x.diskId, x.imagePath]));
      const points = s.points
        .filter((p) => p.pointId !== d.pointId)
        .map((p) => (p.pointId === d.intoPointId ? { ...p, disks: p.disks.map((x) => ({ ...x, imagePath: images.get(x.diskId) ?? x.imagePath })) } : p));
      return { ...s, points, counters: { ...c, mergesCompleted: c.mergesCompleted + 1 } };
    }
    case "ResyncRequired":
      // A go-ahead already given stays: the resync it approved has not completed yet.
      return { ...s, state: "resync-required", resyncReason: event.data.reason, inFlight: undefined };
    case "ResyncApproved":
      return { ...s, resyncApproval: { approvedBy: event.data.approvedBy, approvedByRole: event.data.approvedByRole } };
    case "ResyncStarted":
      return {
        ...s,
        state: "resynchronising",
        inFlight: { cycleSeq: event.data.cycleSeq, kind: "resync", cutoffAt: event.data.cutoffAt },
        // startResync presented the current generation: the primary has adopted it.
        generationHandover: undefined,
      };
    case "ResyncCompleted":
      return { ...s, state: "replicating", inFlight: undefined, resyncReason: undefined, resyncApproval: undefined };
    case "ReplicationPaused":
      return { ...s, state: "paused", pauseReason: event.data.reason };
    case "ReplicationResumed": {
      // A failover upstream learnt while paused left a resync to run.
      const resync = s.upstreamFailover?.resyncOnResume === true;
      return {
        ...s,
        state: resync ? "resync-required" : "replicating",
        pauseReason: undefined,
        ...(resync && s.upstreamFailover ? { upstreamFailover: { ...s.upstreamFailover, resyncOnResume: false } } : {}),
      };
    }
    case "StaleGenerationRefused":
      return { ...s, counters: { ...c, staleGenerationRefusals: c.staleGenerationRefusals + 1 } };
    case "TestFailoverStarted": {
      const d = event.data;
      const test: TestFailover = {
        testId: d.testId,
        pointId: d.pointId,
        startedAt: d.startedAt,
        disks: d.disks.map((x) => ({ ...x, chain: [...x.chain] })),
        runningAt: undefined,
        timeToRunningMs: undefined,
      };
      return {
        ...s,
        testFailovers: { ...s.testFailovers, [d.testId]: test },
        lastTestFailoverAt: d.startedAt,
        counters: { ...c, testFailoversStarted: c.testFailoversStarted + 1 },
      };
    }
    case "TestFailoverRunning": {
      const d = event.data;
      const test = Object.hasOwn(s.testFailovers, d.testId) ? s.testFailovers[d.testId] : undefined;
      if (!test) return s;
      return {
        ...s,
        testFailovers: { ...s.testFailovers, [d.testId]: { ...test, runningAt: d.runningAt, timeToRunningMs: d.timeToRunningMs } },
      };
    }
    case "TestFailoverStopped": {
      const { [event.data.testId]: _stopped, ...rest } = s.testFailovers;
      return { ...s, testFailovers: rest };
    }
    case "FailoverPrepared":
      return {
        ...s,
        state: "prepared-for-planned-failover",
        failover: {
          kind: "planned",
          pointId: undefined,
          previousState: s.state,
          preparedAt: event.data.preparedAt,
          primaryStoppedAt: event.data.primaryStoppedAt,
          primaryGeneration: undefined,
        },
      };
    case "FailedOver": {
      const d = event.data;
      const from = s.failover?.previousState ?? s.state;
      return {
        ...s,
        state: "failed-over-waiting-completion",
        // Never lowered, not even by a cancel: a generation number is never reused.
        generation: Math.max(s.generation, d.generation),
        // An in-flight full or resync cycle is abandoned (storage discards its partial overlay).
        inFlight: undefined,
        generationHandover: undefined,
        // If the failover is cancelled, a resync needs a go-ahead given after it.
        resyncApproval: undefined,
        // The old primary's condition no longer decides anything here.
        cycleSkipped: undefined,
        quiesceFailure: undefined,
        failover: {
          kind: d.kind,
          pointId: d.pointId,
          // The abandoned resync must run again if the failover is cancelled.
          previousState: from === "resynchronising" ? "resync-required" : from,
          preparedAt: s.failover?.preparedAt,
          primaryStoppedAt: s.failover?.primaryStoppedAt,
          primaryGeneration: d.primaryGeneration,
          startVm: d.startVm,
        },
        counters: { ...c, failovers: c.failovers + 1 },
      };
    }
    case "FailoverCompleted":
      // As Complete-VMFailover: the failed-over VM keeps its chain, the recovery points are gone.
      // The suspect points went with them: nothing is left to fail over to or to keep.
      return {
        ...s,
        state: "failed-over",
        points: [],
        inFlight: undefined,
        generationHandover: undefined,
        suspectPoints: [],
        failoverChainImages: event.data.keptChains.flatMap((c) => c.chain),
      };
    case "FailoverCancelled": {
      const d = event.data;
      const handover = d.primaryGeneration < d.generation && s.primaryIdentity !== undefined ? { peerIdentity: s.primaryIdentity, fromGeneration: d.primaryGeneration } : undefined;
      return {
        ...s,
        state: d.returnedTo,
        generation: Math.max(s.generation, d.generation),
        failover: undefined,
        generationHandover: handover,
        counters: { ...c, failoversCancelled: c.failoversCancelled + 1 },
      };
    }
    case "GenerationAcknowledged":
      // An audit record: the handover stays open until a cycle proves the new generation adopted.
      return s;
    case "VmSpecChanged":
      return { ...s, vmSpec: event.data.vmSpec };
    case "ReverseReplicationStarted": {
      const d = event.data;
      return {
        ...s,
        state: "ready-for-initial-replication",
        incrementalSinceInitial: false,
        generation: Math.max(s.generation, d.generation),
        primarySiteId: d.newPrimarySiteId,
        replicaSiteId: d.newReplicaSiteId,
        primaryIdentity: d.newPrimaryIdentity,
        points: [],
        inFlight: undefined,
        failover: undefined,
        generationHandover: undefined,
        resyncApproval: undefined,
        cycleSkipped: undefined,
        quiesceFailure: undefined,
        // The other site's disks: their history says nothing about these.
        encryptionBaselines: {},
        suspectPoints: [],
      };
    }
    case "PrimaryFailedOverUpstream": {
      const d = event.data;
      return {
        ...s,
        // An operator's pause stands; its resume asks for the resync (see ReplicationResumed).
        state: s.state === "paused" ? "paused" : "resync-required",
        generation: Math.max(s.generation, d.generation),
        resyncReason: `the primary failed over upstream: ${d.reason}`,
        // A go-ahead given for an earlier resync is not one for this: with resync manual, an operator decides again.
        resyncApproval: undefined,
        // A cycle the old generation had open is abandoned (its stream is superseded, its partial discarded).
        inFlight: undefined,
        generationHandover: undefined,
        cycleSkipped: undefined,
        upstreamFailover: {
          generation: d.generation,
          previousGeneration: d.previousGeneration,
          peerIdentity: d.peerIdentity,
          reason: d.reason,
          resyncOnResume: s.state === "paused",
        },
      };
    }
    case "PrimaryReplaced": {
      const d = event.data;
      return {
        ...s,
        // Points stay (each was correct at its cut-off); the new primary's disk is compared with the newest.
        state: "resync-required",
        resyncReason: `VM ${s.vmId} failed over to site ${d.primarySiteId}, which replicates it here now: its disk is compared with the newest point`,
        resyncApproval: { approvedBy: d.approvedBy, approvedByRole: d.approvedByRole },
        generation: Math.max(s.generation, d.generation),
        primarySiteId: d.primarySiteId,
        primaryIdentity: d.primaryIdentity,
        formerPrimaryIdentities: [...(s.formerPrimaryIdentities ?? []), d.previousPrimaryIdentity],
        inFlight: undefined,
        generationHandover: undefined,
        cycleSkipped: undefined,
        quiesceFailure: undefined,
        pauseReason: undefined,
        // Another VM's disks now: the old primary's compression history says nothing about them.
        encryptionBaselines: {},
        downstreamFailover: undefined,
      };
    }
    case "FailedOverDownstream": {
      const d = event.data;
      const reason = downstreamFailoverReason(s.vmId, d);
      return {
        ...s,
        // Nothing arrives here until the reverse from that site: health says why, not that the primary fell silent.
        state: "paused",
        pauseReason: reason,
        // A cycle the stopped primary had open is abandoned.
        inFlight: undefined,
        generationHandover: undefined,
        cycleSkipped: undefined,
        downstreamFailover: {
          targetSiteId: d.targetSiteId,
          pointId: d.pointId,
          targetPointId: d.targetPointId,
          primaryStoppedAt: d.primaryStoppedAt,
          primaryIdentity: d.primaryIdentity,
          generation: d.generation,
          requestedBy: d.requestedBy,
          recordedAt: d.recordedAt,
          reason,
        },
      };
    }
    case "DownstreamFailoverCancelled":
      // The primary runs the VM again (or will): its agent is accepted at its generation, the cycles go on.
      return { ...s, state: "replicating", pauseReason: undefined, downstreamFailover: undefined };
    default:
      return assertNever(event);
  }
}

export function foldRelationship(vmId: string, events: Iterable<RelationshipEvent>): RelationshipState {
  let s = initialRelationshipState(vmId);
  for (const e of events) s = evolve(s, e);
  return s;
}

function foldBaselines(
  baselines: Readonly<Record<string, EncryptionBaseline>>,
  compression: Record<string, DiskCompression>,
  dataBytes: Record<string, number>,
): Record<string, EncryptionBaseline> {
  const next: Record<string, EncryptionBaseline> = { ...baselines };
  for (const [diskId, c] of Object.entries(compression)) {
    const b = nextBaseline(baselines[diskId], { dataBytes: dataBytes[diskId] ?? 0, incompressibleBytes: c.incompressibleBytes });
    if (b) next[diskId] = b;
  }
  return next;
}

/** Why the VM no longer replicates here after a planned failover downstream, naming the way on. */
export function downstreamFailoverReason(vmId: string, d: { targetSiteId: string; primaryStoppedAt: string; requestedBy: string }): string {
  const by = d.requestedBy ? ` (asked by ${d.requestedBy})` : "";
  return (
    `VM ${vmId} failed over at site ${d.targetSiteId}${by} in a planned failover through this site: its primary stopped it at ${d.primaryStoppedAt} ` +
    `and is refused here as stale from now on. To replicate the VM back here, run 'qreplica reverse ${vmId} --dir <${d.targetSiteId}'s dir> --to-dir <this site's dir>' at ${d.targetSiteId}. ` +
    `If that failover is cancelled at ${d.targetSiteId} instead, ${d.targetSiteId} tells this site and the fence lifts; should this still show after the cancel ` +
    `(this site or the link was down then), run 'qreplica failover ${vmId} cancel --dir <this site's dir>' here to lift it — only once it is cancelled there, or two sites run the VM`
  );
}

function assertNever(x: never): never {
  throw new Error(`unhandled relationship event ${JSON.stringify(x)}`);
}
