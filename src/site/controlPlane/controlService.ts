import * as grpc from "@grpc/grpc-js";
import { Consistency, CycleKind } from "../../gen/qreplica/v1/common.js";
import {
  FailoverKind,
  ReplicationHealth,
  type ControlServiceServer,
  type DrillReport as WireDrillReport,
  type RecoveryPoint as WirePoint,
  type RelationshipStatus,
} from "../../gen/qreplica/v1/control.js";
import { pauseReplication, resumeReplication, resync } from "./replicationCommands.js";
import { importInitialReplication, initialReplicationWait, seedInitialReplication } from "../initialReplication.js";
import { clearSuspectPoints, executeCommand, prepareFailover, relationshipStream, startReverseReplication, type JsonObject, type VmStatus } from "../../ledger/index.js";
import { loadSiteCredentials } from "../../transport/index.js";
import { checkPrimaryIdentity } from "../authorizations.js";
import { loadSiteConfig } from "../siteConfig.js";
import { actorMetadata } from "./caller.js";
import { guardedWith } from "./guard.js";
import { wireHealth, wireHealthReason, wireState } from "./healthWire.js";
import { AUDIT_STREAM } from "./refusalAudit.js";
import { addAuthorization, appendRunbookEvents, listAuthorizations, readRunbookRun, removeAuthorization, toLedgerEvent } from "./records.js";
import type { SiteContext } from "../siteContext.js";
import type { LaunchedInfo } from "../failover/failoverService.js";
import { extendReplication } from "./extendReplication.js";
import { cancelFailoverCommand } from "../extension/downstreamCancel.js";
import { plannedFailoverThroughSite, prepareReverseFromTarget } from "../extension/reverseFromTarget.js";
import type { DrillReport } from "../drills/drillService.js";

/**
 * The control plane: reads of the ledger and the commands operators give. Every RPC names the
 * role it needs (viewer < operator < admin; agents are refused on all of them) and passes the
 * caller to its handler, which records it with every ledger event the command causes.
 */
export function controlService(ctx: SiteContext): ControlServiceServer {
  const models = ctx.readModels;
  const guarded = guardedWith(ctx.logger, grpcCodeOf, ctx.refusals, () => ctx.revocations);

  const points = async (vmId: string, refreshed = false): Promise<WirePoint[]> => {
    if (!refreshed) await models.refresh();
    const catalogue = models.pointsOf(vmId);
    const lastClean = models.statusOf(vmId, new Date())?.lastCleanPointId;
    // A point being merged away is no longer what it was (its base is being rewritten): not listed.
    return catalogue
      .list()
      .filter((p) => !p.merging)
      .map((p) => {
        const f = catalogue.cycleFacts(p.pointId);
        return {
          recoveryPointId: p.pointId,
          sequence: BigInt(p.cycleSeq),
          generation: BigInt(f?.generation ?? 0),
          cutoffTime: new Date(p.cutoffAt),
          committedAt: f ? new Date(f.committedAt) : undefined,
          consistency: p.consistency === "application" ? Consistency.CONSISTENCY_APPLICATION : Consistency.CONSISTENCY_CRASH,
          kind: f?.kind === "full" ? CycleKind.CYCLE_KIND_INITIAL : f?.kind === "resync" ? CycleKind.CYCLE_KIND_RESYNC : CycleKind.CYCLE_KIND_INCREMENTAL,
          disks: p.disks.map((d) => ({
            diskId: d.diskId,
            virtualSizeBytes: BigInt(d.sizeBytes),
            changedBytes: BigInt(f?.diskDataBytes?.[d.diskId] ?? 0),
            incompressibleBytes: BigInt(f?.diskCompression?.[d.diskId]?.incompressibleBytes ?? 0),
            transferredBytes: BigInt(f?.diskCompression?.[d.diskId]?.wireBytes ?? 0),
          })),
          changedBytes: BigInt(f?.dataBytes ?? 0),
          transferredBytes: BigInt(f?.wireBytes ?? 0),
          suspectDisks: (p.suspect ?? []).map((d) => ({ diskId: d.diskId, share: d.share, baselineShare: d.baselineShare })),
          lastClean: p.pointId === lastClean,
          lockedUntil: p.lockedUntil ? new Date(p.lockedUntil) : undefined,
          groupId: p.group?.groupId ?? "",
          groupCutoffId: p.group?.cutoffId ?? "",
          groupMembers: p.group ? [...p.group.members] : [],
          groupPauseMs: p.group?.pauseMs ?? 0,
          verification: p.verification && drillReportToWire({ ...p.verification, pointId: p.pointId, checks: [] }),
        };
      });
  };

  const toWire = async (s: VmStatus): Promise<RelationshipStatus> => {
    const list = await points(s.vmId, true);
    // The site's health rules (site/health). The message is the first reason's (the gravest, a
    // cause before its symptoms); all of them are in healthReasons.
    if (!ctx.health) throw Object.assign(new Error("the site's health monitor is not running yet"), { grpcCode: grpc.status.UNAVAILABLE });
    const evaluated = await ctx.health.evaluate(s.vmId);
    const health = evaluated ? wireHealth(evaluated.result.level) : ReplicationHealth.REPLICATION_HEALTH_UNSPECIFIED;
    const message = evaluated?.result.reasons[0]?.message ?? "";
    return {
      vmId: s.vmId,
      state: wireState(s.state),
      testFailoverActive: s.activeTestFailovers > 0,
      health,
      generation: BigInt(s.generation),
      primarySiteId: s.primarySiteId ?? "",
      replicaSiteId: s.replicaSiteId ?? "",
      lastRecoveryPoint: list[list.length - 1],
      lag: s.lagSeconds === undefined ? undefined : { seconds: BigInt(Math.floor(s.lagSeconds)), nanos: Math.round((s.lagSeconds % 1) * 1e9) },
      healthMessage: message,
      healthReasons: evaluated?.result.reasons.map(wireHealthReason) ?? [],
      policyName: evaluated?.policyName ?? "",
      cycleInProgress: cycleInProgressOf(s.vmId),
      // Only a forwarded VM costs a relationship load (for its pending points).
      extendedReplication: ctx.extensions?.has(s.vmId) ? ctx.extensions.status(s.vmId, await ctx.relationships.load(s.vmId)) : undefined,
      initialReplicationWait: s.state === "ready-for-initial-replication" ? initialReplicationWait(ctx, s.vmId, new Date()) : "",
    };
  };
  const cycleInProgressOf = (vmId: string) => {
    const c = ctx.sessionFor(vmId)?.cycleInProgress();
    if (!c) return undefined;
    const kind = c.kind === "full" ? CycleKind.CYCLE_KIND_INITIAL : c.kind === "resync" ? CycleKind.CYCLE_KIND_RESYNC : CycleKind.CYCLE_KIND_INCREMENTAL;
    return { cycleSequence: BigInt(c.seq), kind, startedAt: c.startedAt, bytesDone: BigInt(c.bytesDone), bytesTotal: BigInt(c.bytesTotal), wireBytes: BigInt(c.wireBytes) };
  };

  const failovers = ctx.failovers;
  const vmInfo = (v: LaunchedInfo) => ({
    name: v.name,
    qmpSocket: v.qmpSocket,
    serialLog: v.serialLog,
    pid: v.pid,
    timeToRunningMs: BigInt(v.timeToRunningMs),
    diskImages: v.diskImages,
    launcher: v.launcher,
    libvirtDomain: v.libvirtDomain ?? "",
    libvirtUri: v.libvirtUri ?? "",
  });
  return {
    startTestFailover: guarded("operator", async (req, caller) => {
      // Serialized with the VM's commits and retention merges: a merge rewrites the base a VM opens.
      const r = await ctx.serializer.run(req.vmId, () => failovers.startTest(req.vmId, req.recoveryPointId || undefined, caller));
      return { testId: r.testId, recoveryPointId: r.pointId, vm: vmInfo(r.vm) };
    }),
    stopTestFailover: guarded("operator", async (req, caller) => ({ stoppedTestIds: await failovers.stopTests(req.vmId, req.testId || undefined, caller) })),
    failover: guarded("operator", async (req, caller) => {
      if (req.kind === FailoverKind.FAILOVER_KIND_PLANNED) {
        const session = ctx.sessionFor(req.vmId);
        if (!session) {
          throw Object.assign(
            new Error(
              `the primary's agent for VM ${req.vmId} is not connected: a planned failover needs it to stop the VM and ship its last changes (use --unplanned if the primary is gone)`,
            ),
            { grpcCode: grpc.status.FAILED_PRECONDITION },
          );
        }
        if (req.recoveryPointId)
          throw Object.assign(new Error("a planned failover always uses the final point; --point is for unplanned failovers"), { grpcCode: grpc.status.INVALID_ARGUMENT });
        // At the third site of an extended replication the forwarding site relays it to the primary's agent.
        // The forwarding site records who asked with the failover it relays.
        const stopped = await session.requestPlannedFailover(10, 5 * 60_000, session.forwardingSite ? caller : undefined).catch(async (err: unknown) => {
          if (!session.forwardingSite) throw err;
          throw plannedFailoverThroughSite(req.vmId, (await ctx.relationships.load(req.vmId)).primarySiteId ?? "the forwarding site", err);
        });
        await executeCommand(ctx.store, req.vmId, (s) => prepareFailover(s, { preparedAt: new Date().toISOString(), primaryStoppedAt: stopped.stoppedAt.toISOString() }), {
          metadata: actorMetadata(caller),
        });
        const r = await ctx.serializer.run(req.vmId, () => failovers.failover(req.vmId, "planned", undefined, req.startVm, caller));
        return { recoveryPointId: r.pointId, generation: BigInt(r.generation), vm: r.vm && vmInfo(r.vm), primaryDisks: stopped.disks };
      }
      const r = await ctx.serializer.run(req.vmId, () => failovers.failover(req.vmId, "unplanned", req.recoveryPointId || undefined, req.startVm, caller));
      return { recoveryPointId: r.pointId, generation: BigInt(r.generation), vm: r.vm && vmInfo(r.vm), primaryDisks: [] };
    }),
    completeFailover: guarded("operator", async (req, caller) => {
      const dropped = await ctx.serializer.run(req.vmId, () => failovers.complete(req.vmId, caller));
      // With an extended replica, the failover VM replicates on to it from now on (its errors are in status).
      await ctx.extensions?.failoverCompleted(req.vmId);
      return { droppedRecoveryPointIds: dropped };
    }),
    cancelFailover: guarded("operator", (req, caller) =>
      // Extended replication: on a forwarding site, the fence a cancelled failover downstream left.
      cancelFailoverCommand(
        {
          store: ctx.store,
          serializer: ctx.serializer,
          relationships: ctx.relationships,
          logger: ctx.logger,
          sessionFor: (vmId) => ctx.sessionFor(vmId),
          forwardAgain: ctx.extensions ? (vmId) => ctx.extensions!.forwardAgain(vmId) : undefined,
          cancelHere: (vmId, by) => failovers.cancel(vmId, by),
        },
        req.vmId,
        caller,
      ),
    ),
    prepareReverseReplication: guarded("operator", async (req, caller) => {
      checkPrimaryIdentity(req.primaryIdentity);
      const vmSpec = vmSpecOf(req.vmSpecJson);
      const onReplica = await prepareReverseFromTarget(ctx, caller, {
        vmId: req.vmId,
        generation: Number(req.generation),
        primarySiteId: req.primarySiteId,
        primaryIdentity: req.primaryIdentity,
        seeds: req.seeds,
      });
      if (onReplica) {
        await ctx.authorizations.add(req.primaryIdentity, caller);
        return { state: onReplica.state };
      }
      const state = await ctx.relationships.prepareReverse(caller, {
        vmId: req.vmId,
        generation: Number(req.generation),
        primarySiteId: req.primarySiteId,
        primaryIdentity: req.primaryIdentity,
        disks: req.disks.map((d) => ({ diskId: d.diskId, sizeBytes: Number(d.virtualSizeBytes) })),
        seeds: req.seeds.map((s) => ({ diskId: s.diskId, imagePath: s.imagePath })),
        vmSpec,
      });
      // The new primary's own identity, never a wildcard, recorded with the operator who asked;
      // only once the relationship is ready for it, so a refused reverse authorizes nobody.
      await ctx.authorizations.add(req.primaryIdentity, caller);
      return { state: state.state };
    }),
    startReverseReplication: guarded("operator", async (req, caller) => {
      refuseReverseWhileExtended(ctx, req.vmId);
      const config = loadSiteConfig(ctx.dir);
      const identity = loadSiteCredentials({ caFile: config.caFile, certFile: config.certFile, keyFile: config.keyFile }).identity.commonName;
      failovers.assertReversible(req.vmId);
      const { newState } = await executeCommand(ctx.store, req.vmId, (s) => startReverseReplication(s, { newPrimarySiteId: ctx.siteId, newPrimaryIdentity: identity }), {
        metadata: actorMetadata(caller),
      });
      const { qmpSocket } = await failovers.releaseFailedOverVm(req.vmId);
      const { pid } = failovers.startReverseAgent({
        siteId: ctx.siteId,
        vmId: req.vmId,
        qmpSocket,
        disks: newState.disks,
        replicaAddress: req.replicaAddress,
        replicaSiteId: newState.replicaSiteId ?? "",
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
    getStatus: guarded("viewer", async (req) => {
      await models.refresh();
      const now = new Date();
      const all = req.vmId ? [models.statusOf(req.vmId, now)].filter((s): s is VmStatus => s !== undefined) : models.statusList(now);
      if (req.vmId && all.length === 0)
        throw Object.assign(new Error(`no replication relationship for VM '${req.vmId}' on site ${ctx.siteId}`), { grpcCode: grpc.status.NOT_FOUND });
      return { siteId: ctx.siteId, relationships: await Promise.all(all.map(toWire)) };
    }),
    listRecoveryPoints: guarded("viewer", async (req) => {
      await requireRelationship(ctx, req.vmId);
      return { recoveryPoints: await points(req.vmId) };
    }),
    listEvents: guarded("viewer", async (req, caller) => {
      const limit = Math.min(Math.max(req.limit || 100, 1), 1000);
      // The ledger's positions are SQLite integers (signed 64-bit): a uint64 past them names no event.
      if (req.fromPosition > MAX_LEDGER_POSITION) {
        throw Object.assign(
          new Error(
            `ListEvents: fromPosition ${req.fromPosition} is past the ledger's last possible position (${MAX_LEDGER_POSITION}); pass the nextPosition of an earlier page, or 0`,
          ),
          { grpcCode: grpc.status.INVALID_ARGUMENT },
        );
      }
      if (req.vmId) await requireRelationship(ctx, req.vmId);
      const prefix = req.streamPrefix || undefined;
      if (prefix !== undefined && req.vmId) throw Object.assign(new Error("ListEvents: give a VM id or a stream prefix, not both"), { grpcCode: grpc.status.INVALID_ARGUMENT });
      if (prefix !== undefined && AUDIT_STREAM.startsWith(prefix) && caller.role !== "admin") {
        throw Object.assign(new Error(`the ${AUDIT_STREAM} stream (refused calls) is shown to admins only; '${caller.identity}' has role ${caller.role}`), {
          grpcCode: grpc.status.PERMISSION_DENIED,
        });
      }
      // One more than asked: whether the ledger holds more is then known, not guessed.
      const read = req.vmId
        ? await ctx.store.readStream(relationshipStream(req.vmId), { fromVersion: req.fromPosition, maxCount: limit + 1 })
        : await ctx.store.readAll({ fromPosition: req.fromPosition > 0n ? req.fromPosition - 1n : undefined, maxCount: limit + 1, streamPrefix: prefix });
      const events = read.slice(0, limit);
      const last = events[events.length - 1];
      // The audit stream (refused calls: who probed what) is for admins, who manage who may do what;
      // positions still advance past it, so a viewer's paging goes on to the events it may read.
      const visible = caller.role === "admin" ? events : events.filter((e) => e.stream !== AUDIT_STREAM);
      return {
        events: visible.map(toLedgerEvent),
        nextPosition: last ? (req.vmId ? last.version + 1n : last.globalPosition + 1n) : req.fromPosition,
        endReached: read.length <= limit,
      };
    }),
    pauseReplication: guarded("operator", (req, caller) => pauseReplication(ctx, req, caller)),
    resumeReplication: guarded("operator", (req, caller) => resumeReplication(ctx, req, caller)),
    resync: guarded("operator", (req, caller) => resync(ctx, req, caller)),
    listAuthorizations: guarded("viewer", () => listAuthorizations(ctx)),
    addAuthorization: guarded("admin", (req, caller) => addAuthorization(ctx, req, caller)),
    removeAuthorization: guarded("admin", (req, caller) => removeAuthorization(ctx, req, caller)),
    appendRunbookEvents: guarded("operator", (req, caller) => appendRunbookEvents(ctx, req, caller)),
    readRunbookRun: guarded("viewer", (req) => readRunbookRun(ctx, req)),
    whoAmI: guarded("viewer", async (_req, caller) => ({ identity: caller.identity, role: caller.role, siteId: ctx.siteId })),
    extendReplication: guarded("operator", (req, caller) => extendReplication(ctx, req, caller)),
    clearSuspectPoints: guarded("operator", async (req, caller) => {
      await requireRelationship(ctx, req.vmId);
      const approval = { clearedBy: caller.identity, clearedByRole: caller.role, ...(req.recoveryPointId ? { pointId: req.recoveryPointId } : {}) };
      const { events } = await executeCommand(ctx.store, req.vmId, (s) => clearSuspectPoints(s, approval), { metadata: actorMetadata(caller) });
      return { clearedRecoveryPointIds: events.flatMap((e) => (e.type === "SuspectPointsCleared" ? e.data.pointIds : [])) };
    }),
    seedInitialReplication: guarded("operator", async (req, caller) => {
      const r = await seedInitialReplication(ctx, { vmId: req.vmId, seeds: req.seeds.map((x) => ({ diskId: x.diskId, imagePath: x.imagePath })) }, caller);
      return { state: r.state, agentNotified: r.agentNotified, recoveryPointId: "", cycleSequence: 0n, localBytes: BigInt(r.localBytes) };
    }),
    importInitialReplication: guarded("operator", async (req, caller) => {
      const r = await importInitialReplication(ctx, { vmId: req.vmId, exportDir: req.exportDir }, caller);
      return { state: r.state, agentNotified: r.agentNotified, recoveryPointId: r.pointId, cycleSequence: BigInt(r.cycleSeq), localBytes: BigInt(r.localBytes) };
    }),
    verifyPoint: guarded("operator", async (req, caller) => {
      await requireRelationship(ctx, req.vmId);
      if (!ctx.drills) throw Object.assign(new Error("the site's drills are not running yet; try again in a moment"), { grpcCode: grpc.status.UNAVAILABLE });
      if (req.timeoutSeconds > 24 * 3600) throw Object.assign(new Error("VerifyPoint: timeoutSeconds is at most 86400 (24 h)"), { grpcCode: grpc.status.INVALID_ARGUMENT });
      const d = await ctx.drills.start(req.vmId, {
        pointId: req.recoveryPointId || undefined,
        trigger: "operator",
        caller,
        ...(req.timeoutSeconds ? { timeoutSeconds: req.timeoutSeconds } : {}),
      });
      if (!req.wait) return { drillId: d.drillId, recoveryPointId: d.pointId };
      return { drillId: d.drillId, recoveryPointId: d.pointId, report: drillReportToWire(await d.done) };
    }),
  };
}

/** A drill's result on the wire (VerifyPoint, and each point's last drill in ListRecoveryPoints). */
function drillReportToWire(r: DrillReport): WireDrillReport {
  return {
    drillId: r.drillId,
    recoveryPointId: r.pointId,
    result: r.result,
    failedCheck: r.failedCheck ?? "",
    message: r.message ?? "",
    timeToVerifiedMs: BigInt(r.timeToVerifiedMs ?? 0),
    checks: r.checks.map((c) => ({ check: c.check, passed: c.passed, atMs: BigInt(c.atMs), detail: c.detail ?? "" })),
    finishedAt: new Date(r.finishedAt),
    trigger: r.trigger,
  };
}

const MAX_LEDGER_POSITION = 2n ** 63n - 1n;

/**
 * A VM has one replica at a time: while it replicates on to an extended replica (or is configured
 * to), reverse replication toward the old primary is refused, naming the fix.
 */
function refuseReverseWhileExtended(ctx: SiteContext, vmId: string): void {
  const target = ctx.extensions?.targetOf(vmId);
  if (!target) return;
  throw Object.assign(
    new Error(
      `VM ${vmId} replicates on to its extended replica, site ${target.targetSiteId}, and a VM has one replica at a time: ` +
        `stop that first ('qreplica extend ${vmId} --dir SITE_DIR --stop'), then reverse replication toward the old primary`,
    ),
    { grpcCode: grpc.status.FAILED_PRECONDITION },
  );
}

/** PrepareReverseReplication's vmSpecJson: empty, or the JSON object the old primary's relationship recorded. */
function vmSpecOf(json: string): JsonObject | undefined {
  if (!json) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (err) {
    throw Object.assign(new Error(`PrepareReverseReplication: vmSpecJson is not JSON (${(err as Error).message}); send the VM spec as a JSON object, or leave it empty`), {
      grpcCode: grpc.status.INVALID_ARGUMENT,
    });
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw Object.assign(new Error("PrepareReverseReplication: vmSpecJson must be a JSON object (machine, cpus, memoryMiB, disks, nics), or empty"), {
      grpcCode: grpc.status.INVALID_ARGUMENT,
    });
  }
  return parsed as JsonObject;
}

/** Refusals by the relationship's state are the operator's to resolve, not server faults. */
function grpcCodeOf(err: unknown): grpc.status {
  const explicit = (err as { grpcCode?: number }).grpcCode;
  if (explicit !== undefined) return explicit;
  const code = (err as { code?: unknown }).code;
  if (typeof code !== "string") return grpc.status.INTERNAL;
  if (code === "AUTHORIZATION_INVALID" || code === "AUTHORIZATION_WILDCARD") return grpc.status.INVALID_ARGUMENT;
  if (code === "AUTHORIZATION_NOT_FOUND") return grpc.status.NOT_FOUND;
  if (code === "EXTENSION_INVALID") return grpc.status.INVALID_ARGUMENT;
  if (code === "EXTENSION_NOT_CONFIGURED") return grpc.status.FAILED_PRECONDITION;
  if (
    [
      "INVALID_TRANSITION",
      "STALE_GENERATION",
      "FAILOVER_REFUSED",
      "MERGE_BLOCKED_BY_TEST_FAILOVER",
      "MERGE_IN_PROGRESS",
      "SEED_UNUSABLE",
      "EXPORT_UNUSABLE",
      "INITIAL_REPLICATION_REFUSED",
      "RESYNC_ALREADY_APPROVED",
      "RECOVERY_POINT_LOCKED",
      "NO_CLEAN_POINT",
      "NO_SUSPECT_POINT",
      "VERIFICATION_NOT_CONFIGURED",
      "REVERSE_FROM_TARGET_REFUSED",
      "PLANNED_FAILOVER_NOT_RELAYED",
    ].includes(code)
  )
    return grpc.status.FAILED_PRECONDITION;
  if (code.startsWith("INVALID") || code === "UNKNOWN_POINT") return grpc.status.INVALID_ARGUMENT;
  // The operator named a point, test or merge that is not there (or no longer): not a server fault.
  if (code === "RECOVERY_POINT_UNAVAILABLE") return (err as { why?: string }).why === "unknown" ? grpc.status.NOT_FOUND : grpc.status.FAILED_PRECONDITION;
  if (code === "NO_SUCH_TEST_FAILOVER" || code === "NO_SUCH_MERGE") return grpc.status.NOT_FOUND;
  if (code === "TEST_FAILOVER_EXISTS" || code === "DRILL_RUNNING") return grpc.status.ALREADY_EXISTS;
  if (code === "DRILLS_STOPPED") return grpc.status.UNAVAILABLE;
  if (["TEST_FAILOVERS_RUNNING", "PLANNED_FAILOVER_NOT_READY", "UNEXPECTED_GENERATION", "OUT_OF_ORDER_CYCLE"].includes(code)) return grpc.status.FAILED_PRECONDITION;
  if (code === "WRONG_EXPECTED_VERSION") return grpc.status.ABORTED;
  // The data plane's wrapper of a domain refusal (relationships/relationshipDeps.ts): the refusal it carries decides.
  if (code === "RELATIONSHIP_REFUSED") return (err as { cause?: unknown }).cause ? grpcCodeOf((err as { cause?: unknown }).cause) : grpc.status.FAILED_PRECONDITION;
  return grpc.status.INTERNAL;
}

/** A VM this site has no relationship for is an operator's typo: say so rather than list nothing. */
async function requireRelationship(ctx: SiteContext, vmId: string): Promise<void> {
  if (!vmId) throw Object.assign(new Error("a VM id is required"), { grpcCode: grpc.status.INVALID_ARGUMENT });
  const first = await ctx.store.readStream(relationshipStream(vmId), { maxCount: 1 });
  if (first.length === 0) {
    throw Object.assign(new Error(`no replication relationship for VM '${vmId}' on site ${ctx.siteId} ('qreplica status --dir <site>' lists the VMs replicated here)`), {
      grpcCode: grpc.status.NOT_FOUND,
    });
  }
}
