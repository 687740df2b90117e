import { QreplicaError } from "../common/errors.js";

/** What a group point needs of each member's recovery point (the wire's RecoveryPoint fits). */
export interface MemberPoint {
  recoveryPointId: string;
  cutoffTime?: Date | undefined;
  groupId: string;
  groupCutoffId: string;
  groupMembers: string[];
  groupPauseMs: number;
}

/** One cut-off of a consistency group that every member of the cut has a committed point of. */
export interface GroupPoint {
  /** The group cut-off id: the same on every member's point. */
  groupPointId: string;
  groupId: string;
  /** VM id -> that member's recovery point id. */
  members: Record<string, string>;
  /** The members' cut-off stamps: earliest and latest (all within the group's one pause). */
  cutoffFrom: Date | undefined;
  cutoffTo: Date | undefined;
  pauseMs: number | undefined;
}

export interface GroupSummary {
  groupId: string;
  /** As the newest point of the group names them. */
  members: string[];
  /** Complete group points, oldest first. */
  points: GroupPoint[];
  /** Group cut-offs some member has no (or no longer a) point of: not recoverable as a group. */
  incomplete: number;
}

export class GroupNotFoundError extends QreplicaError {
  readonly code = "GROUP_NOT_FOUND" as const;
  constructor(groupId: string, known: string[]) {
    super(
      `no consistency group ${groupId} on this site: no recovery point names it (groups here: ${known.join(", ") || "none"}); a group's points appear once its members' agent cuts them together (agent config groups:)`,
    );
  }
}

export class GroupPointNotFoundError extends QreplicaError {
  readonly code = "GROUP_POINT_NOT_FOUND" as const;
  constructor(groupId: string, pointId: string | undefined) {
    super(
      pointId === undefined
        ? `group ${groupId} has no complete group point yet (every member must have committed a point of one group cut-off); see 'qreplica group points ${groupId}'`
        : `group ${groupId} has no complete group point ${pointId}: pick one from 'qreplica group points ${groupId}'`,
    );
  }
}

/**
 * Group points from each VM's recovery points: a group cut-off is a group point when every member
 * its points name has a point of it. Retention is per VM, so a cut-off whose point one member has
 * already merged away is no longer a group point.
 */
export function groupPoints(pointsByVm: ReadonlyMap<string, readonly MemberPoint[]>): GroupSummary[] {
  const cuts = new Map<string, Map<string, { vmId: string; p: MemberPoint }[]>>();
  for (const [vmId, points] of pointsByVm) {
    for (const p of points) {
      if (!p.groupId || !p.groupCutoffId) continue;
      const byCut = cuts.get(p.groupId) ?? new Map<string, { vmId: string; p: MemberPoint }[]>();
      cuts.set(p.groupId, byCut);
      byCut.set(p.groupCutoffId, [...(byCut.get(p.groupCutoffId) ?? []), { vmId, p }]);
    }
  }
  const out: GroupSummary[] = [];
  for (const [groupId, byCut] of [...cuts].sort(([a], [b]) => a.localeCompare(b))) {
    const points: GroupPoint[] = [];
    let incomplete = 0;
    let members: string[] = [];
    for (const [cutoffId, held] of [...byCut].sort(([a], [b]) => a.localeCompare(b))) {
      const named = held[0]!.p.groupMembers;
      members = named;
      if (!named.every((m) => held.some((h) => h.vmId === m))) {
        incomplete++;
        continue;
      }
      const stamps = held.map((h) => h.p.cutoffTime?.getTime()).filter((t): t is number => t !== undefined);
      const pause = held.find((h) => h.p.groupPauseMs > 0)?.p.groupPauseMs;
      points.push({
        groupPointId: cutoffId,
        groupId,
        members: Object.fromEntries(named.map((m) => [m, held.find((h) => h.vmId === m)!.p.recoveryPointId])),
        cutoffFrom: stamps.length ? new Date(Math.min(...stamps)) : undefined,
        cutoffTo: stamps.length ? new Date(Math.max(...stamps)) : undefined,
        pauseMs: pause,
      });
    }
    out.push({ groupId, members, points, incomplete });
  }
  return out;
}

/** The group's point `pointId`, or its newest when undefined / "latest". */
export function pickGroupPoint(groups: readonly GroupSummary[], groupId: string, pointId?: string): GroupPoint {
  const g = groups.find((x) => x.groupId === groupId);
  if (!g)
    throw new GroupNotFoundError(
      groupId,
      groups.map((x) => x.groupId),
    );
  const wanted = pointId === undefined || pointId === "" || pointId === "latest" ? undefined : pointId;
  const p = wanted === undefined ? g.points.at(-1) : g.points.find((x) => x.groupPointId === wanted);
  if (!p) throw new GroupPointNotFoundError(groupId, wanted);
  return p;
}
