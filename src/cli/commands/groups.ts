import type { Command } from "commander";
import { errorMessage, QreplicaError } from "../../common/errors.js";
import { FailoverKind, type ControlServiceClient, type RecoveryPoint } from "../../gen/qreplica/v1/control.js";
import { groupPoints, pickGroupPoint, type GroupPoint, type GroupSummary } from "../../site/groupPoints.js";
import type { GroupPointResolver } from "../../runbook/index.js";
import { controlClient, unary } from "../siteClient.js";
import { formatTable } from "../table.js";
import { emit, fail } from "../output.js";
import { withTarget, type Target } from "../target.js";

const TARGET_HELP = { dir: "the replica site's directory on this host", site: "the replica site's address" };

/** Some members of a group command failed: the others went ahead (each member is its own relationship). */
export class GroupCommandPartialError extends QreplicaError {
  readonly code = "GROUP_COMMAND_PARTIAL" as const;
  constructor(what: string, groupId: string, done: string[], failed: Array<{ vmId: string; error: string }>) {
    super(
      `${what} of group ${groupId}: ${failed.map((f) => `${f.vmId} failed (${f.error})`).join("; ")}` +
        (done.length ? `; ${done.join(", ")} went ahead: repeat the command for the failed members or undo the others ('qreplica group cancel ${groupId}')` : ""),
    );
  }
}

/** Every relationship's points on the site, and the groups they form. */
export async function loadGroups(client: ControlServiceClient): Promise<GroupSummary[]> {
  const status = await unary(client, client.getStatus, {});
  const byVm = new Map<string, RecoveryPoint[]>();
  for (const r of status.relationships) byVm.set(r.vmId, (await unary(client, client.listRecoveryPoints, { vmId: r.vmId })).recoveryPoints);
  return groupPoints(byVm);
}

/**
 * Group points for a runbook's consistency groups, read from the site once. With members pinned
 * (a resumed run: some already failed over), the group point their points belong to.
 */
export function groupPointResolver(client: ControlServiceClient): GroupPointResolver {
  let groups: GroupSummary[] | undefined;
  return async (group, point, pinned) => {
    groups ??= await loadGroups(client);
    const pins = Object.entries(pinned);
    const held = groups
      .find((g) => g.groupId === group)
      ?.points.find((p) => pins.some(([vm]) => p.members[vm] !== undefined) && pins.every(([vm, id]) => p.members[vm] === undefined || p.members[vm] === id));
    return held ?? pickGroupPoint(groups, group, point);
  };
}

/** Runs `fn` for every member at once; all outcomes are collected, a failure names who did and who did not. */
async function forEachMember<T>(what: string, gp: GroupPoint, fn: (vmId: string, pointId: string) => Promise<T>): Promise<Array<{ vmId: string; result: T }>> {
  const members = Object.entries(gp.members);
  const settled = await Promise.allSettled(members.map(([vmId, pointId]) => fn(vmId, pointId)));
  const done = members.flatMap(([vmId], i) => (settled[i]!.status === "fulfilled" ? [vmId] : []));
  const failed = members.flatMap(([vmId], i) => {
    const s = settled[i]!;
    return s.status === "rejected" ? [{ vmId, error: errorMessage(s.reason) }] : [];
  });
  if (failed.length === members.length && failed.length > 0) throw (settled[0] as PromiseRejectedResult).reason;
  if (failed.length > 0) throw new GroupCommandPartialError(what, gp.groupId, done, failed);
  return members.map(([vmId], i) => ({ vmId, result: (settled[i] as PromiseFulfilledResult<T>).value }));
}

const iso = (d: Date | undefined) => d?.toISOString() ?? "-";

export function registerGroups(program: Command): void {
  const group = program.command("group").description("consistency groups: VMs cut together by their agent (group points, group failover)");

  withTarget(group.command("list").description("the consistency groups whose points this replica site holds"), TARGET_HELP).action(async (o: Target) => {
    try {
      const client = controlClient(o);
      const groups = await loadGroups(client);
      client.close();
      emit(
        o.json,
        groups.map((g) => ({ groupId: g.groupId, members: g.members, groupPoints: g.points.length, incomplete: g.incomplete, newest: g.points.at(-1) ?? null })),
        () =>
          formatTable(
            ["group", "members", "group points", "newest", "cut-off"],
            groups.map((g) => [g.groupId, g.members.join(" "), g.points.length, g.points.at(-1)?.groupPointId ?? "-", iso(g.points.at(-1)?.cutoffFrom)]),
          ),
      );
    } catch (err) {
      fail(err, o.json);
    }
  });

  withTarget(group.command("points <group>").description("the group's points, oldest first: one cut-off, one point per member"), TARGET_HELP).action(
    async (groupId: string, o: Target) => {
      try {
        const client = controlClient(o);
        const groups = await loadGroups(client);
        client.close();
        const g = groups.find((x) => x.groupId === groupId);
        // pickGroupPoint names the known groups when this one is not among them.
        if (!g) pickGroupPoint(groups, groupId);
        const points = g?.points ?? [];
        emit(o.json, points, () =>
          formatTable(
            ["group point", "cut-off", "pause ms", "members"],
            points.map((p) => [
              p.groupPointId,
              iso(p.cutoffFrom),
              p.pauseMs === undefined ? "-" : p.pauseMs.toFixed(1),
              Object.entries(p.members)
                .map(([vm, point]) => `${vm}:${point}`)
                .join(" "),
            ]),
          ),
        );
      } catch (err) {
        fail(err, o.json);
      }
    },
  );

  withTarget(
    group
      .command("failover <group>")
      .description("fail every member over to its point of one group point (--test or --unplanned); role operator")
      .option("--test", "test failover of every member on the isolated network; replication continues")
      .option("--unplanned", "unplanned failover of every member")
      .option("--point <id>", "group point (the newest complete one when omitted)")
      .option("--no-start", "fail over without starting the VMs"),
    TARGET_HELP,
  ).action(async (groupId: string, o: Target & { test?: boolean; unplanned?: boolean; point?: string; start: boolean }) => {
    try {
      if ([o.test, o.unplanned].filter(Boolean).length !== 1) throw new Error("say which group failover: exactly one of --test, --unplanned (a planned failover is per VM)");
      const client = controlClient(o);
      const gp = pickGroupPoint(await loadGroups(client), groupId, o.point);
      const rows = o.test
        ? await forEachMember("test failover", gp, async (vmId, pointId) => {
            const r = await unary(client, client.startTestFailover, { vmId, recoveryPointId: pointId }, 120_000);
            return { recoveryPointId: r.recoveryPointId, testId: r.testId, vm: r.vm };
          })
        : await forEachMember("failover", gp, async (vmId, pointId) => {
            const r = await unary(client, client.failover, { vmId, kind: FailoverKind.FAILOVER_KIND_UNPLANNED, recoveryPointId: pointId, startVm: o.start }, 120_000);
            return { recoveryPointId: r.recoveryPointId, generation: r.generation, vm: r.vm };
          });
      client.close();
      const members = rows.map((r) => ({ vmId: r.vmId, ...r.result }));
      emit(
        o.json,
        { groupId, groupPointId: gp.groupPointId, test: o.test === true, members },
        () =>
          formatTable(
            ["vm", "point", "running after ms", "serial log"],
            members.map((m) => [m.vmId, m.recoveryPointId, m.vm ? Number(m.vm.timeToRunningMs) : "-", m.vm?.serialLog ?? "(not started)"]),
          ) +
          (o.test
            ? `\nstop them with: qreplica group test-stop ${groupId}`
            : `\nnext: 'qreplica group complete ${groupId}' to commit, or 'qreplica group cancel ${groupId}' to go back`),
      );
    } catch (err) {
      fail(err, o.json);
    }
  });

  const perMember = (name: string, description: string, call: (client: ControlServiceClient, vmId: string) => Promise<unknown>) =>
    withTarget(group.command(`${name} <group>`).description(description), TARGET_HELP).action(async (groupId: string, o: Target) => {
      try {
        const client = controlClient(o);
        const groups = await loadGroups(client);
        const g = groups.find((x) => x.groupId === groupId);
        if (!g) pickGroupPoint(groups, groupId);
        const members = Object.fromEntries((g?.members ?? []).map((m) => [m, ""]));
        const rows = await forEachMember(name, { groupPointId: "", groupId, members, cutoffFrom: undefined, cutoffTo: undefined, pauseMs: undefined }, (vmId) =>
          call(client, vmId),
        );
        client.close();
        const out = rows.map((r) => ({ vmId: r.vmId, ...(r.result as object) }));
        emit(o.json, { groupId, members: out }, () => `group ${groupId}: ${name} done for ${rows.map((r) => r.vmId).join(", ")}`);
      } catch (err) {
        fail(err, o.json);
      }
    });
  perMember("test-stop", "stop every member's test failovers and discard their overlays; role operator", (c, vmId) => unary(c, c.stopTestFailover, { vmId, testId: "" }, 60_000));
  perMember("complete", "complete every member's failover (the other points are dropped); role operator", (c, vmId) => unary(c, c.completeFailover, { vmId }));
  perMember("cancel", "cancel every member's failover (the failover VMs stop, their writes are discarded); role operator", (c, vmId) => unary(c, c.cancelFailover, { vmId }));
}
