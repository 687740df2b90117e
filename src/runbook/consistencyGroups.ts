import { QreplicaError } from "../common/errors.js";
import type { Runbook, RunbookVm } from "./model.js";

/** A group point as the site lists it: each member's recovery point of one group cut-off. */
export interface ResolvedGroupPoint {
  groupPointId: string;
  /** VM id -> recovery point id. */
  members: Record<string, string>;
}

/**
 * Finds the group point a runbook entry means: `point` ("latest" or an id), or, when some members
 * already failed over in the run being resumed (`pinned`: VM -> the point it failed over to), the
 * group point those points belong to, so the rest follow them to the same cut-off.
 */
export type GroupPointResolver = (group: string, point: string, pinned: Readonly<Record<string, string>>) => Promise<ResolvedGroupPoint>;

export class ConsistencyGroupMemberListedError extends QreplicaError {
  readonly code = "RUNBOOK_GROUP_MEMBER_LISTED" as const;
  constructor(vm: string, group: string) {
    super(`VM ${vm} is a member of consistency group ${group} and is also listed on its own in the runbook: a VM fails over once per run; remove its own entry`);
  }
}

export function hasConsistencyGroups(runbook: Runbook): boolean {
  return runbook.groups.some((g) => (g.consistencyGroups?.length ?? 0) > 0);
}

/**
 * The runbook with every consistency group replaced by its members, each pinned to its point of
 * the one group point: what `plan` shows and `run` executes. Resolved once, when the run starts:
 * "latest" is the newest group point then, not a point per member when its step runs (which could
 * fall on different cut-offs).
 */
export async function expandConsistencyGroups(runbook: Runbook, resolve: GroupPointResolver, pinned: ReadonlyMap<string, string> = new Map()): Promise<Runbook> {
  if (!hasConsistencyGroups(runbook)) return runbook;
  const listed = new Set(runbook.groups.flatMap((g) => g.vms.map((v) => v.vm)));
  const groups = [];
  for (const g of runbook.groups) {
    const vms: RunbookVm[] = [...g.vms];
    for (const cg of g.consistencyGroups ?? []) {
      const mine = Object.fromEntries([...pinned].filter(([vm]) => !listed.has(vm)));
      const gp = await resolve(cg.consistencyGroup, cg.point, mine);
      for (const [vm, point] of Object.entries(gp.members)) {
        if (listed.has(vm)) throw new ConsistencyGroupMemberListedError(vm, cg.consistencyGroup);
        listed.add(vm);
        vms.push({ vm, failover: cg.failover, point, groupPoint: { group: cg.consistencyGroup, groupPointId: gp.groupPointId } });
      }
    }
    const { consistencyGroups: _expanded, ...rest } = g;
    groups.push({ ...rest, vms });
  }
  return { ...runbook, groups };
}
