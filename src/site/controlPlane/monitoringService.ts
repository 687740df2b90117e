/**
 * MonitoringService: statistics for operators and dashboards (role viewer; agents refused, and
 * refusals audited, through the same guard as ControlService).
 */
import * as grpc from "@grpc/grpc-js";
import type { MeasureResponse, MonitoringServiceServer } from "../../gen/qreplica/v1/monitoring.js";
import type { Duration } from "../../gen/google/protobuf/duration.js";
import type { Measurement } from "../health/measure.js";
import { MAX_WINDOW_SECONDS } from "../health/history.js";
import type { SiteContext } from "../siteContext.js";
import { guardedWith } from "./guard.js";
import { wireHealth, wireHealthReason, wireState } from "./healthWire.js";

export function monitoringService(ctx: SiteContext): MonitoringServiceServer {
  const guarded = guardedWith(ctx.logger, codeOf, ctx.refusals, () => ctx.revocations);
  return {
    measure: guarded("viewer", async (req) => {
      if (!req.vmId) throw Object.assign(new Error("Measure needs a VM id"), { grpcCode: grpc.status.INVALID_ARGUMENT });
      const windowSeconds = req.window ? Number(req.window.seconds) + req.window.nanos / 1e9 : undefined;
      if (windowSeconds !== undefined && !(windowSeconds > 0 && windowSeconds <= MAX_WINDOW_SECONDS)) {
        throw Object.assign(
          new Error(`the monitoring window must be longer than 0 s and at most ${MAX_WINDOW_SECONDS / 3600} h (the site keeps a day of cycle history), not ${windowSeconds} s`),
          { grpcCode: grpc.status.INVALID_ARGUMENT },
        );
      }
      const health = ctx.health;
      if (!health) throw Object.assign(new Error("the site's health monitor is not running yet"), { grpcCode: grpc.status.UNAVAILABLE });
      const m = await health.measure(req.vmId, windowSeconds);
      if (!m) {
        throw Object.assign(new Error(`no replication relationship for VM '${req.vmId}' on site ${ctx.siteId} ('qreplica status' lists the VMs replicated here)`), {
          grpcCode: grpc.status.NOT_FOUND,
        });
      }
      return toWire(m);
    }),
  };
}

export function durationOf(seconds: number): Duration {
  const whole = Math.floor(seconds);
  return { seconds: BigInt(whole), nanos: Math.round((seconds - whole) * 1e9) };
}

const date = (iso: string | null) => (iso === null ? undefined : new Date(iso));

function toWire(m: Measurement): MeasureResponse {
  return {
    vmId: m.vmId,
    state: wireState(m.state),
    health: wireHealth(m.health),
    healthReasons: m.healthReasons.map(wireHealthReason),
    monitoringStartTime: new Date(m.monitoringStartTime),
    monitoringEndTime: new Date(m.monitoringEndTime),
    lastReplicationTime: date(m.lastReplicationTime),
    newestPointCutoffTime: date(m.newestPointCutoffTime),
    newestPointAge: m.newestPointAgeSeconds === null ? undefined : durationOf(m.newestPointAgeSeconds),
    pendingReplicationBytes: m.pendingReplicationBytes === null ? undefined : BigInt(m.pendingReplicationBytes),
    averageReplicationBytes: BigInt(m.averageReplicationBytes),
    maxReplicationBytes: BigInt(m.maxReplicationBytes),
    averageTransferredBytes: BigInt(m.averageTransferredBytes),
    maxTransferredBytes: BigInt(m.maxTransferredBytes),
    averageReplicationLatencySeconds: m.averageReplicationLatencySeconds,
    maxReplicationLatencySeconds: m.maxReplicationLatencySeconds,
    replicationSuccessCount: BigInt(m.replicationSuccessCount),
    replicationMissCount: BigInt(m.replicationMissCount),
    replicationFailureCount: BigInt(m.replicationFailureCount),
    lastTestFailoverTime: date(m.lastTestFailoverTime),
    frequencySeconds: m.frequencySeconds,
    rpoAlertSeconds: m.rpoAlertSeconds,
    agentConnected: m.agentConnected,
  };
}

function codeOf(err: unknown): grpc.status {
  const explicit = (err as { grpcCode?: number }).grpcCode;
  if (explicit !== undefined) return explicit;
  if (typeof (err as { code?: unknown }).code === "string" && String((err as { code: string }).code).startsWith("INVALID")) return grpc.status.INVALID_ARGUMENT;
  return grpc.status.INTERNAL;
}
