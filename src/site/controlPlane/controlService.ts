import * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../../common/errors.js";
import { Consistency, CycleKind } from "../../gen/qreplica/v1/common.js";
import {
  FailoverKind,
  RelationshipState as WireState,
  ReplicationHealth,
  type ControlServiceServer,
  type RecoveryPoint as WirePoint,
  type RelationshipStatus,
} from "../../gen/qreplica/v1/control.js";
import { RecoveryPointsProjection, StatusProjection, executeCommand, prepareFailover, relationshipStream, startReverseReplication, type JsonObject, type VmStatus } from "../../ledger/index.js";
import { join } from "node:path";
import { loadSiteCredentials, peerIdentity } from "../../transport/index.js";
import { addAuthorization, loadSiteConfig, runDir } from "../siteConfig.js";
import { startReverseAgent } from "../failover/reverseAgent.js";
import type { SiteContext } from "../siteContext.js";
import type { LaunchedInfo } from "../failover/failoverService.js";

const WIRE_STATE: Record<string, WireState> = {
  "ready-for-initial-replication": WireState.RELATIONSHIP_STATE_READY_FOR_INITIAL_REPLICATION,
  "initial-replication-in-progress": WireState.RELATIONSHIP_STATE_INITIAL_REPLICATION_IN_PROGRESS,
  replicating: WireState.RELATIONSHIP_STATE_REPLICATING,
  paused: WireState.RELATIONSHIP_STATE_PAUSED,
  "resync-required": WireState.RELATIONSHIP_STATE_RESYNC_REQUIRED,
  resynchronising: WireState.RELATIONSHIP_STATE_RESYNCHRONISING,
  "prepared-for-planned-failover": WireState.RELATIONSHIP_STATE_PREPARED_FOR_PLANNED_FAILOVER,
  "failed-over-waiting-completion": WireState.RELATIONSHIP_STATE_FAILED_OVER_WAITING_COMPLETION,
  "failed-over": WireState.RELATIONSHIP_STATE_FAILED_OVER,
};

interface CycleFacts {
  kind: string;
  generation: number;
  committedAt: string;
  dataBytes: number;
  wireBytes: number;
}

/** Read-only views of the ledger for operators: status, recovery points, the audit trail. */
export function controlService(ctx: SiteContext): ControlServiceServer {
  const status = new StatusProjection();
  const guarded =
    <Req, Res>(fn: (req: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) => {
      try {
        peerIdentity(call as unknown as grpc.ServerUnaryCall<Req, Res>);
      } catch (err) {
        callback({ code: grpc.status.UNAUTHENTICATED, details: errorMessage(err) });
        return;
      }
      fn(call.request).then(
        (res) => callback(null, res),
        (err: unknown) => callback({ code: grpcCodeOf(err), details: errorMessage(err) }),
      );
    };

  const cycleFacts = async (vmId: string): Promise<Map<number, CycleFacts>> => {
    const facts = new Map<number, CycleFacts>();
    for (const e of await ctx.store.readStream(relationshipStream(vmId))) {
      if (e.type !== "CycleCommitted") continue;
      const d = e.data as { cycleSeq: number; kind: string; generation: number; committedAt: string; dataBytes: number; wireBytes: number };
      facts.set(d.cycleSeq, d);
    }
    return facts;
  };

  const points = async (vmId: string): Promise<WirePoint[]> => {
    const catalogue = await RecoveryPointsProjection.rebuild(ctx.store, vmId);
    const facts = await cycleFacts(vmId);
    // A point being merged away is no longer what it was (its base is being rewritten): not listed.
    return catalogue.list().filter((p) => !p.merging).map((p) => {
      const f = facts.get(p.cycleSeq);
      return {
        recoveryPointId: p.pointId,
        sequence: BigInt(p.cycleSeq),
        generation: BigInt(f?.generation ?? 0),
        cutoffTime: new Date(p.cutoffAt),
        committedAt: f ? new Date(f.committedAt) : undefined,
        consistency: p.consistency === "application" ? Consistency.CONSISTENCY_APPLICATION : Consistency.CONSISTENCY_CRASH,
        kind: f?.kind === "full" ? CycleKind.CYCLE_KIND_INITIAL : f?.kind === "resync" ? CycleKind.CYCLE_KIND_RESYNC : CycleKind.CYCLE_KIND_INCREMENTAL,
        disks: p.disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeBytes), changedBytes: 0n })),
        changedBytes: BigInt(f?.dataBytes ?? 0),
        transferredBytes: BigInt(f?.wireBytes ?? 0),
      };
    });
  };

  const toWire = async (s: VmStatus): Promise<RelationshipStatus> => {
    const list = await points(s.vmId);
    const { health, message } = healthOf(s);
    return {
      vmId: s.vmId,
      state: WIRE_STATE[s.state] ?? WireState.RELATIONSHIP_STATE_UNSPECIFIED,
      testFailoverActive: s.activeTestFailovers > 0,
      health,
      generation: BigInt(s.generation),
      primarySiteId: s.primarySiteId ?? "",
      replicaSiteId: s.replicaSiteId ?? "",
      lastRecoveryPoint: list[list.length - 1],
      lag: s.lagSeconds === undefined ? undefined : { seconds: BigInt(Math.floor(s.lagSeconds)), nanos: Math.round((s.lagSeconds % 1) * 1e9) },
      healthMessage: message,
    };
  };

  const failovers = ctx.failovers;
  const vmInfo = (v: LaunchedInfo) => ({ name: v.name, qmpSocket: v.qmpSocket, serialLog: v.serialLog, pid: v.pid, timeToRunningMs: BigInt(v.timeToRunningMs), diskImages: v.diskImages });
  return {
    startTestFailover: guarded(async (req) => {
      // Serialized with the VM's commits and retention merges: a merge rewrites the base a VM opens.
      const r = await ctx.serializer.run(req.vmId, () => failovers.startTest(req.vmId, req.recoveryPointId || undefined));
      return { testId: r.testId, recoveryPointId: r.pointId, vm: vmInfo(r.vm) };
    }),
    stopTestFailover: guarded(async (req) => ({ stoppedTestIds: await failovers.stopTests(req.vmId, req.testId || undefined) })),
    failover: guarded(async (req) => {
      if (req.kind === FailoverKind.FAILOVER_KIND_PLANNED) {
        const session = ctx.sessionFor(req.vmId);
        if (!session) {
          throw Object.assign(new Error(`the primary's agent for VM ${req.vmId} is not connected: a planned failover needs it to stop the VM and ship its last changes (use --unplanned if the primary is gone)`), { grpcCode: grpc.status.FAILED_PRECONDITION });
        }
        if (req.recoveryPointId) throw Object.assign(new Error("a planned failover always uses the final point; --point is for unplanned failovers"), { grpcCode: grpc.status.INVALID_ARGUMENT });
        const stopped = await session.requestPlannedFailover(10, 5 * 60_000);
        await executeCommand(ctx.store, req.vmId, (s) => prepareFailover(s, { preparedAt: new Date().toISOString(), primaryStoppedAt: stopped.stoppedAt.toISOString() }));
        const r = await ctx.serializer.run(req.vmId, () => failovers.failover(req.vmId, "planned", undefined, req.startVm));
        return { recoveryPointId: r.pointId, generation: BigInt(r.generation), vm: r.vm && vmInfo(r.vm), primaryDisks: stopped.disks };
      }
      const r = await ctx.serializer.run(req.vmId, () => failovers.failover(req.vmId, "unplanned", req.recoveryPointId || undefined, req.startVm));
      return { recoveryPointId: r.pointId, generation: BigInt(r.generation), vm: r.vm && vmInfo(r.vm), primaryDisks: [] };
    }),
    completeFailover: guarded(async (req) => ({ droppedRecoveryPointIds: await ctx.serializer.run(req.vmId, () => failovers.complete(req.vmId)) })),
    cancelFailover: guarded(async (req) => ({ state: await failovers.cancel(req.vmId) })),
    prepareReverseReplication: guarded(async (req) => {
      // The operator asked for it over the authenticated control plane: the new primary may replicate here.
      addAuthorization(ctx.dir, { primaryIdentity: req.primaryIdentity, trustGroup: "reverse" });
      const state = await ctx.relationships.prepareReverse({
        vmId: req.vmId,
        generation: Number(req.generation),
        primarySiteId: req.primarySiteId,
        primaryIdentity: req.primaryIdentity,
        disks: req.disks.map((d) => ({ diskId: d.diskId, sizeBytes: Number(d.virtualSizeBytes) })),
        seeds: req.seeds.map((s) => ({ diskId: s.diskId, imagePath: s.imagePath })),
        vmSpec: req.vmSpecJson ? (JSON.parse(req.vmSpecJson) as JsonObject) : undefined,
      });
      return { state: state.state };
    }),
    startReverseReplication: guarded(async (req) => {
      const config = loadSiteConfig(ctx.dir);
      const identity = loadSiteCredentials({ caFile: config.caFile, certFile: config.certFile, keyFile: config.keyFile }).identity.commonName;
      const { newState } = await executeCommand(ctx.store, req.vmId, (s) => startReverseReplication(s, { newPrimarySiteId: ctx.siteId, newPrimaryIdentity: identity }));
      const { qmpSocket } = await failovers.releaseFailedOverVm(req.vmId);
      const pid = startReverseAgent({
        dir: join(runDir(ctx.dir), "reverse", req.vmId),
        siteId: ctx.siteId,
        vmId: req.vmId,
        qmpSocket,
        disks: newState.disks,
        replicaAddress: req.replicaAddress,
        tls: { caFile: config.caFile, certFile: config.certFile, keyFile: config.keyFile },
        vmSpec: newState.vmSpec,
        intervalSeconds: 2,
        generation: newState.generation,
      });
      return {
        generation: BigInt(newState.generation),
        agentPid: pid,
        primaryIdentity: identity,
        disks: newState.disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeBytes) })),
        vmSpecJson: JSON.stringify(newState.vmSpec),
      };
    }),
    getStatus: guarded(async (req) => {
      await status.catchUp(ctx.store);
      const now = new Date();
      const all = req.vmId ? [status.get(req.vmId, now)].filter((s): s is VmStatus => s !== undefined) : status.list(now);
      if (req.vmId && all.length === 0) throw Object.assign(new Error(`no replication relationship for VM '${req.vmId}' on site ${ctx.siteId}`), { grpcCode: grpc.status.NOT_FOUND });
      return { siteId: ctx.siteId, relationships: await Promise.all(all.map(toWire)) };
    }),
    listRecoveryPoints: guarded(async (req) => {
      await requireRelationship(ctx, req.vmId);
      return { recoveryPoints: await points(req.vmId) };
    }),
    listEvents: guarded(async (req) => {
      const limit = Math.min(Math.max(req.limit || 100, 1), 1000);
      if (req.vmId) await requireRelationship(ctx, req.vmId);
      // One more than asked: whether the ledger holds more is then known, not guessed.
      const read = req.vmId
        ? await ctx.store.readStream(relationshipStream(req.vmId), { fromVersion: req.fromPosition, maxCount: limit + 1 })
        : await ctx.store.readAll({ fromPosition: req.fromPosition > 0n ? req.fromPosition - 1n : undefined, maxCount: limit + 1 });
      const events = read.slice(0, limit);
      const last = events[events.length - 1];
      return {
        events: events.map((e) => ({
          eventId: `${e.stream}@${e.version}`,
          stream: e.stream,
          streamVersion: e.version,
          globalPosition: e.globalPosition,
          type: e.type,
          recordedAt: e.recordedAt,
          dataJson: JSON.stringify(e.data),
          actor: typeof e.metadata.actor === "string" ? e.metadata.actor : "",
          actorRole: typeof e.metadata.actorRole === "string" ? e.metadata.actorRole : "",
        })),
        nextPosition: last ? (req.vmId ? last.version + 1n : last.globalPosition + 1n) : req.fromPosition,
        endReached: read.length <= limit,
      };
    }),
    pauseReplication: notYet("PauseReplication"),
    resumeReplication: notYet("ResumeReplication"),
    resync: notYet("Resync"),
    listAuthorizations: notYet("ListAuthorizations"),
    addAuthorization: notYet("AddAuthorization"),
    removeAuthorization: notYet("RemoveAuthorization"),
    appendRunbookEvents: notYet("AppendRunbookEvents"),
    readRunbookRun: notYet("ReadRunbookRun"),
    whoAmI: notYet("WhoAmI"),
  };
}

/** An RPC of the contract whose handler this site does not have yet. */
function notYet(name: string): grpc.handleUnaryCall<unknown, never> {
  return (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED, details: `${name} is not implemented by this site yet` });
}

/** Refusals by the relationship's state are the operator's to resolve, not server faults. */
function grpcCodeOf(err: unknown): grpc.status {
  const explicit = (err as { grpcCode?: number }).grpcCode;
  if (explicit !== undefined) return explicit;
  const code = (err as { code?: unknown }).code;
  if (typeof code !== "string") return grpc.status.INTERNAL;
  if (["INVALID_TRANSITION", "STALE_GENERATION", "FAILOVER_REFUSED", "MERGE_BLOCKED_BY_TEST_FAILOVER", "MERGE_IN_PROGRESS", "SEED_UNUSABLE"].includes(code)) return grpc.status.FAILED_PRECONDITION;
  if (code.startsWith("INVALID") || code === "UNKNOWN_POINT") return grpc.status.INVALID_ARGUMENT;
  return grpc.status.INTERNAL;
}

/** Hyper-V-like health: critical when replication cannot go on, warning when it is failing or late. */
function healthOf(s: VmStatus): { health: ReplicationHealth; message: string } {
  if (s.state === "resync-required") return { health: ReplicationHealth.REPLICATION_HEALTH_CRITICAL, message: "resync required" };
  if (s.consecutiveFailures >= 3) return { health: ReplicationHealth.REPLICATION_HEALTH_CRITICAL, message: `${s.consecutiveFailures} cycles failed in a row: ${s.lastError?.message ?? ""}` };
  if (s.consecutiveFailures > 0) return { health: ReplicationHealth.REPLICATION_HEALTH_WARNING, message: `last cycle failed: ${s.lastError?.message ?? ""}` };
  if (s.state === "paused") return { health: ReplicationHealth.REPLICATION_HEALTH_WARNING, message: "replication is paused" };
  return { health: ReplicationHealth.REPLICATION_HEALTH_NORMAL, message: "" };
}

/** A VM this site has no relationship for is an operator's typo: say so rather than list nothing. */
async function requireRelationship(ctx: SiteContext, vmId: string): Promise<void> {
  if (!vmId) throw Object.assign(new Error("a VM id is required"), { grpcCode: grpc.status.INVALID_ARGUMENT });
  const first = await ctx.store.readStream(relationshipStream(vmId), { maxCount: 1 });
  if (first.length === 0) {
    throw Object.assign(new Error(`no replication relationship for VM '${vmId}' on site ${ctx.siteId} ('qreplica status --dir <site>' lists the VMs replicated here)`), { grpcCode: grpc.status.NOT_FOUND });
  }
}
