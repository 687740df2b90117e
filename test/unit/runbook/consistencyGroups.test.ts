import { describe, expect, it } from "vitest";
import { ConsistencyGroupMemberListedError, expandConsistencyGroups, planRunbook, validateRunbook, type GroupPointResolver } from "../../../src/runbook/index.js";
import { makeRunbook } from "./helpers.js";

/** Two group points of app1: c1 (rp-1, rp-5) and the newest c2 (rp-2, rp-6). */
const resolver: GroupPointResolver = async (group, point, pinned) => {
  expect(group).toBe("app1");
  const points = [
    { groupPointId: "c1", members: { db1: "rp-1", web1: "rp-5" } },
    { groupPointId: "c2", members: { db1: "rp-2", web1: "rp-6" } },
  ];
  const pins = Object.entries(pinned);
  const held = points.find((p) => pins.length > 0 && pins.every(([vm, id]) => p.members[vm as "db1"] === id));
  return held ?? (point === "latest" ? points[1]! : points.find((p) => p.groupPointId === point)!);
};

describe("runbooks naming consistency groups", () => {
  it("expands a group into its members, each pinned to its point of one group point, in the group's boot-order place", async () => {
    const rb = makeRunbook({
      groups: [{ vms: ["dns1"] }, { name: "app", vms: [{ consistencyGroup: "app1" }], steps: [{ wait: "vm-running" }] }],
    });
    expect(rb.groups[1]!.consistencyGroups).toEqual([{ consistencyGroup: "app1", failover: "unplanned", point: "latest" }]);
    const plan = planRunbook(await expandConsistencyGroups(rb, resolver), { test: false });
    const failovers = plan.steps.filter((s) => s.kind === "failover");
    expect(failovers.map((s) => [s.group, s.id, s.kind === "failover" ? s.point : ""])).toEqual([
      [1, "g1.vm.dns1.failover", undefined],
      [2, "g2.vm.db1.failover", "rp-2"],
      [2, "g2.vm.web1.failover", "rp-6"],
    ]);
    expect(failovers[1]!.description).toBe("unplanned failover of db1 to point rp-2 (consistency group app1, group point c2)");
    // The wait of the group covers the members.
    expect(plan.steps.find((s) => s.id === "g2.step1.wait")).toMatchObject({ vms: ["db1", "web1"] });
  });

  it("a named group point, a drill, and a resumed run whose members follow the point one of them already failed over to", async () => {
    const rb = makeRunbook({ groups: [{ vms: [{ consistencyGroup: "app1", failover: "test", point: "c1" }] }] });
    const plan = planRunbook(await expandConsistencyGroups(rb, resolver), { test: true });
    expect(plan.steps.filter((s) => s.kind === "failover").map((s) => (s.kind === "failover" ? [s.vm, s.mode, s.point] : []))).toEqual([
      ["db1", "test", "rp-1"],
      ["web1", "test", "rp-5"],
    ]);
    const latest = makeRunbook({ groups: [{ vms: [{ consistencyGroup: "app1" }] }] });
    const resumed = await expandConsistencyGroups(latest, resolver, new Map([["db1", "rp-1"]]));
    expect(resumed.groups[0]!.vms.map((v) => v.point)).toEqual(["rp-1", "rp-5"]);
  });

  it("refuses a planned group failover, a group listed twice, and a member also listed on its own", async () => {
    const r = validateRunbook(
      { name: "x", site: { dir: "/b" }, groups: [{ vms: [{ consistencyGroup: "app1", failover: "planned" }] }, { vms: [{ consistencyGroup: "app1", failover: "test" }] }] },
      { baseDir: "/rb" },
    );
    expect(r.ok).toBe(false);
    const messages = r.ok ? [] : r.problems.map((p) => `${p.path}: ${p.message}`);
    expect(messages).toContain("groups[0].vms[0].failover: a consistency group fails over test or unplanned");
    expect(messages).toContain("groups[1].vms[0].consistencyGroup: group 'app1' is already in groups[0].vms[0]");
    const both = makeRunbook({ groups: [{ vms: ["web1", { consistencyGroup: "app1" }] }] });
    await expect(expandConsistencyGroups(both, resolver)).rejects.toThrow(ConsistencyGroupMemberListedError);
    expect(() => planRunbook(both, { test: false })).toThrow(/expand them first/);
  });
});
