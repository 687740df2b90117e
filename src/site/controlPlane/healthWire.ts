/** Health and state as the control plane's wire enums. */
import { RelationshipState as WireState, ReplicationHealth, type HealthReason as WireHealthReason } from "../../gen/qreplica/v1/control.js";
import type { ReplicationStateName } from "../../ledger/domain/states.js";
import type { HealthLevel, HealthReason } from "../health/rules.js";

const WIRE_STATE: Partial<Record<ReplicationStateName, WireState>> = {
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

export const wireState = (s: ReplicationStateName): WireState => WIRE_STATE[s] ?? WireState.RELATIONSHIP_STATE_UNSPECIFIED;

export function wireHealth(level: HealthLevel): ReplicationHealth {
  return level === "critical"
    ? ReplicationHealth.REPLICATION_HEALTH_CRITICAL
    : level === "warning"
      ? ReplicationHealth.REPLICATION_HEALTH_WARNING
      : ReplicationHealth.REPLICATION_HEALTH_NORMAL;
}

export function wireHealthReason(r: HealthReason): WireHealthReason {
  return { code: r.code, level: wireHealth(r.level), message: r.message };
}
