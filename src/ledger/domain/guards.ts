/**
 * Checks shared by the commands. Input checks run first (a malformed input is a caller bug and
 * says so), then state, then generation and ordering, so each refusal names the real problem.
 */
import {
  InvalidCommandInputError,
  InvalidTransitionError,
  NoCleanPointError,
  NoSuchTestFailoverError,
  OutOfOrderCycleError,
  RecoveryPointUnavailableError,
  StaleGenerationError,
} from "./errors.js";
import type { ChainDisk, Consistency, PointDisk } from "./events.js";
import type { RecoveryPoint, RelationshipState, TestFailover } from "./relationship.js";
import type { ReplicationStateName } from "./states.js";
import { LAST_CLEAN_POINT, lastCleanPoint } from "./pointSafety.js";

export function requireState(s: RelationshipState, command: string, allowed: readonly ReplicationStateName[], hint?: string): void {
  if (!allowed.includes(s.state)) throw new InvalidTransitionError(s.vmId, s.state, command, allowed, hint);
}

export function requireEnabled(s: RelationshipState, command: string, allowed: readonly ReplicationStateName[]): void {
  if (s.state === "not-enabled") throw new InvalidTransitionError(s.vmId, s.state, command, allowed);
}

export function requireGeneration(s: RelationshipState, presented: number): void {
  if (presented !== s.generation) throw new StaleGenerationError(s.vmId, presented, s.generation);
}

export function requireNextCycle(s: RelationshipState, cycleSeq: number): void {
  if (cycleSeq <= s.lastCycleSeq) throw new OutOfOrderCycleError(s.vmId, cycleSeq, s.lastCycleSeq);
}

/**
 * The point a test or failover VM is built on: the given one, or the latest. A point being merged
 * away cannot be opened; the refusal lists those that can.
 */
export function requireOpenablePoint(s: RelationshipState, pointId: string | undefined): RecoveryPoint {
  const available = s.points.filter((p) => !p.merging).map((p) => p.pointId);
  if (s.points.length === 0) throw new RecoveryPointUnavailableError(s.vmId, pointId, "none", available);
  if (pointId === LAST_CLEAN_POINT) {
    // Resolved here, in the ledger's own state, so the point chosen is the one the ledger holds now.
    const clean = lastCleanPoint(s);
    if (!clean) throw new NoCleanPointError(s.vmId, s.suspectPoints[0]?.pointId ?? "?");
    return clean;
  }
  const point = pointId === undefined ? s.points.at(-1) : s.points.find((p) => p.pointId === pointId);
  if (!point) throw new RecoveryPointUnavailableError(s.vmId, pointId, "unknown", available);
  if (point.merging) throw new RecoveryPointUnavailableError(s.vmId, point.pointId, "merging", available);
  return point;
}

/** Per disk, the images that open `point`: every point's own image up to it, base first. */
export function chainDisks(s: RelationshipState, point: RecoveryPoint): ChainDisk[] {
  const upTo = s.points.slice(0, s.points.indexOf(point) + 1);
  return point.disks.map((d) => ({
    diskId: d.diskId,
    sizeBytes: d.sizeBytes,
    imagePath: d.imagePath,
    chain: upTo.map((p) => p.disks.find((x) => x.diskId === d.diskId)?.imagePath).filter((x): x is string => x !== undefined),
  }));
}

export function runningTests(s: RelationshipState): TestFailover[] {
  return Object.values(s.testFailovers).sort((a, b) => (a.testId < b.testId ? -1 : a.testId > b.testId ? 1 : 0));
}

export function requireRunningTest(s: RelationshipState, testId: string): TestFailover {
  const test = Object.hasOwn(s.testFailovers, testId) ? s.testFailovers[testId] : undefined;
  if (!test)
    throw new NoSuchTestFailoverError(
      s.vmId,
      testId,
      runningTests(s).map((t) => `${t.testId} (${t.pointId})`),
    );
  return test;
}

// #region input validation

export function requireText(command: string, name: string, v: unknown): string {
  if (typeof v !== "string" || v.trim().length === 0) {
    throw new InvalidCommandInputError(`${command}: ${name} must be a non-empty string, got ${describe(v)}`);
  }
  return v;
}

/** Safe integers only: the store keeps numbers as JSON, and above 2^53 they silently round. */
export function requireCount(command: string, name: string, v: unknown, min = 0): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
    throw new InvalidCommandInputError(`${command}: ${name} must be a safe integer >= ${min}, got ${describe(v)}`);
  }
  return v;
}

/** Normalised to `toISOString()` so every stored time sorts and compares as text. */
export function requireTime(command: string, name: string, v: unknown): string {
  const ms = typeof v === "string" && /^\d{4}-\d{2}-\d{2}T/.test(v) ? Date.parse(v) : NaN;
  if (Number.isNaN(ms)) {
    throw new InvalidCommandInputError(`${command}: ${name} must be an ISO-8601 date-time, got ${describe(v)}`);
  }
  return new Date(ms).toISOString();
}

export function requireConsistency(command: string, v: unknown): Consistency {
  if (v !== "application" && v !== "crash") {
    throw new InvalidCommandInputError(`${command}: consistency must be "application" or "crash", got ${describe(v)}`);
  }
  return v;
}

export function requireUniqueDiskIds(command: string, ids: readonly string[]): void {
  const seen = new Set<string>();
  for (const id of ids) {
    if (seen.has(id)) throw new InvalidCommandInputError(`${command}: disk ${id} is listed twice`);
    seen.add(id);
  }
}

/**
 * A point must hold every replicated disk: a point missing one would not be the VM at its
 * cut-off (invariant 1). Adding or removing a disk needs the relationship to be re-enabled.
 */
export function requirePointDisks(command: string, s: RelationshipState, disks: unknown): PointDisk[] {
  if (!Array.isArray(disks)) throw new InvalidCommandInputError(`${command}: disks must be an array`);
  const out = disks.map((d: Partial<PointDisk> | undefined, i) => ({
    diskId: requireText(command, `disks[${i}].diskId`, d?.diskId),
    sizeBytes: requireCount(command, `disks[${i}].sizeBytes`, d?.sizeBytes),
    imagePath: requireText(command, `disks[${i}].imagePath`, d?.imagePath),
  }));
  requireUniqueDiskIds(
    command,
    out.map((d) => d.diskId),
  );
  const expected = s.disks.map((d) => d.diskId).sort();
  const got = out.map((d) => d.diskId).sort();
  if (expected.join("\0") !== got.join("\0")) {
    throw new InvalidCommandInputError(
      `${command}: VM ${s.vmId} replicates disks [${expected.join(", ")}] but the cycle carries [${got.join(", ")}]. ` +
        `Every point must hold every disk; to add or remove a disk, re-enable replication.`,
    );
  }
  return out;
}

function describe(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "bigint") return `${v}n (bigint)`;
  return String(v);
}

// #endregion
