import { RelationshipState, ReplicationHealth, type GetStatusResponse, type HealthReason, type RecoveryPoint, type RelationshipStatus } from "../gen/qreplica/v1/control.js";
import { Consistency, CycleKind } from "../gen/qreplica/v1/common.js";

/**
 * What `--json` prints: the wire's messages with every enum as its name, lower-case kebab without
 * the enum's prefix (RELATIONSHIP_STATE_RESYNC_REQUIRED -> "resync-required"), the names the
 * ledger and the tables use. The wire stays numeric; scripts should not have to know the numbers.
 */
export const enumName = (e: Record<number, string>, v: number, prefix: string) => (e[v] ?? "UNKNOWN").replace(prefix, "").toLowerCase().replaceAll("_", "-");

export const healthName = (h: number) => enumName(ReplicationHealth, h, "REPLICATION_HEALTH_");
export const stateName = (s: number) => enumName(RelationshipState, s, "RELATIONSHIP_STATE_");
export const kindName = (k: number) => enumName(CycleKind, k, "CYCLE_KIND_");
export const consistencyName = (c: number) => enumName(Consistency, c, "CONSISTENCY_");
export const reasonJson = (r: HealthReason) => ({ code: r.code, level: healthName(r.level), message: r.message });

export function pointJson(p: RecoveryPoint) {
  return {
    ...p,
    consistency: consistencyName(p.consistency),
    kind: kindName(p.kind),
    verification: p.verification ? { ...p.verification, timeToVerifiedMs: Number(p.verification.timeToVerifiedMs), checks: undefined } : undefined,
  };
}

export function relationshipJson(r: RelationshipStatus) {
  return {
    ...r,
    state: stateName(r.state),
    health: healthName(r.health),
    healthReasons: r.healthReasons.map(reasonJson),
    lastRecoveryPoint: r.lastRecoveryPoint ? pointJson(r.lastRecoveryPoint) : undefined,
    cycleInProgress: r.cycleInProgress ? { ...r.cycleInProgress, kind: kindName(r.cycleInProgress.kind) } : undefined,
  };
}

export function statusJson(res: GetStatusResponse) {
  return { siteId: res.siteId, relationships: res.relationships.map(relationshipJson) };
}
