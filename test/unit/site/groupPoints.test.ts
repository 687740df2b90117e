import { describe, expect, it } from "vitest";
import { GroupNotFoundError, GroupPointNotFoundError, groupPoints, pickGroupPoint, type MemberPoint } from "../../../src/site/groupPoints.js";

const p = (id: string, cut: string, members = ["vm1", "vm2"], group = "app1"): MemberPoint => ({
  recoveryPointId: id,
  cutoffTime: new Date(`2026-12-05T06:00:0${cut.at(-1)}.000Z`),
  groupId: group,
  groupCutoffId: cut,
  groupMembers: members,
  groupPauseMs: 12.5,
});
const plain: MemberPoint = { recoveryPointId: "rp-9", cutoffTime: new Date(0), groupId: "", groupCutoffId: "", groupMembers: [], groupPauseMs: 0 };

describe("group points from the members' recovery points", () => {
  it("a cut-off is a group point only when every member it names has a point of it; oldest first", () => {
    const groups = groupPoints(
      new Map([
        ["vm1", [p("rp-1", "c1"), p("rp-2", "c2"), p("rp-3", "c3"), plain]],
        // vm2's point of c1 was merged away by its retention; c3 is not committed yet.
        ["vm2", [p("rp-7", "c2")]],
        ["vm3", [plain]],
      ]),
    );
    expect(groups).toEqual([
      {
        groupId: "app1",
        members: ["vm1", "vm2"],
        incomplete: 2,
        points: [
          {
            groupPointId: "c2",
            groupId: "app1",
            members: { vm1: "rp-2", vm2: "rp-7" },
            cutoffFrom: new Date("2026-12-05T06:00:02.000Z"),
            cutoffTo: new Date("2026-12-05T06:00:02.000Z"),
            pauseMs: 12.5,
          },
        ],
      },
    ]);
  });

  it("picks the newest group point, or the one named; refusals name the group and where to look", () => {
    const groups = groupPoints(
      new Map([
        ["a", [p("rp-1", "c1", ["a", "b"], "g"), p("rp-2", "c2", ["a", "b"], "g")]],
        ["b", [p("rp-5", "c1", ["a", "b"], "g"), p("rp-6", "c2", ["a", "b"], "g")]],
      ]),
    );
    expect(pickGroupPoint(groups, "g").members).toEqual({ a: "rp-2", b: "rp-6" });
    expect(pickGroupPoint(groups, "g", "latest").groupPointId).toBe("c2");
    expect(pickGroupPoint(groups, "g", "c1").members).toEqual({ a: "rp-1", b: "rp-5" });
    expect(() => pickGroupPoint(groups, "g", "c9")).toThrow(GroupPointNotFoundError);
    expect(() => pickGroupPoint(groups, "g", "c9")).toThrow(/no complete group point c9: pick one from 'qreplica group points g'/);
    expect(() => pickGroupPoint(groups, "other")).toThrow(GroupNotFoundError);
    expect(() => pickGroupPoint(groups, "other")).toThrow(/groups here: g/);
  });
});
