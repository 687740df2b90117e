import { describe, expect, it } from "vitest";
import { AgentConfigError, agentConfigFrom } from "../../../replica-agent/daemon/agentConfig.js";

const vm = (id: string, extra: Record<string, unknown> = {}) => ({
  id,
  qmpSocket: `${id}.qmp`,
  nbdSocket: `${id}.nbd`,
  disks: [{ id: "vda", node: "vda" }],
  replicaSite: "127.0.0.1:7443",
  replicaSiteId: "site-b",
  ...extra,
});
const config = (vms: unknown[], groups: unknown, extra: Record<string, unknown> = {}) =>
  agentConfigFrom({ siteId: "site-a", stateDir: "/s", tls: { caFile: "c", certFile: "a", keyFile: "k" }, vms, groups, ...extra }, "/etc/agent.yaml");
const problems = (f: () => unknown): string => {
  try {
    f();
  } catch (err) {
    if (err instanceof AgentConfigError) return err.message;
    throw err;
  }
  throw new Error("the config loaded; a refusal was expected");
};

describe("agent config: consistency groups", () => {
  it("gives each member its group (members in config order, the join timeout in ms); VMs outside groups have none", () => {
    const c = config([vm("db"), vm("web"), vm("solo")], [{ id: "app1", vms: ["web", "db"], joinTimeoutSeconds: 1.5 }]);
    expect(c.vms.find((v) => v.id === "db")!.group).toEqual({ id: "app1", members: ["web", "db"], joinTimeoutMs: 1500 });
    expect(c.vms.find((v) => v.id === "web")!.group).toEqual(c.vms.find((v) => v.id === "db")!.group);
    expect(c.vms.find((v) => v.id === "solo")!.group).toBeUndefined();
    expect(config([vm("a"), vm("b")], [{ id: "g", vms: ["a", "b"] }]).vms[0]!.group!.joinTimeoutMs).toBe(2000);
  });

  it("refuses an unknown member, a VM in two groups, a group of one and a duplicate group, naming the field", () => {
    expect(problems(() => config([vm("a"), vm("b")], [{ id: "g", vms: ["a", "nope"] }]))).toMatch(/groups\[0\]\.vms\[1\]: names VM nope, which is not in vms/);
    expect(
      problems(() =>
        config(
          [vm("a"), vm("b"), vm("c")],
          [
            { id: "g", vms: ["a", "b"] },
            { id: "h", vms: ["b", "c"] },
          ],
        ),
      ),
    ).toMatch(/groups\[1\]\.vms\[0\]: VM b is already in group g/);
    expect(problems(() => config([vm("a")], [{ id: "g", vms: ["a"] }]))).toMatch(/groups\[0\]\.vms: must list at least two VM ids/);
    expect(
      problems(() =>
        config(
          [vm("a"), vm("b")],
          [
            { id: "g", vms: ["a", "b"] },
            { id: "g", vms: [] },
          ],
        ),
      ),
    ).toMatch(/group g is listed twice/);
    expect(problems(() => config([vm("a"), vm("b")], [{ id: "../g", vms: ["a", "b"] }]))).toMatch(/groups\[0\]\.id: "\.\.\/g" is not a valid group id/);
  });

  it("refuses members replicating to different sites, and a group larger than maxCyclesInFlight (its members cut together)", () => {
    expect(problems(() => config([vm("a"), vm("b", { replicaSite: "10.0.0.9:7443" })], [{ id: "g", vms: ["a", "b"] }]))).toMatch(/VM b replicates to another site than a/);
    const five = ["a", "b", "c", "d", "e"];
    expect(
      problems(() =>
        config(
          five.map((id) => vm(id)),
          [{ id: "g", vms: five }],
        ),
      ),
    ).toMatch(/5 members, but maxCyclesInFlight is 4: .*at least 5/);
    expect(
      config(
        five.map((id) => vm(id)),
        [{ id: "g", vms: five }],
        { maxCyclesInFlight: 5 },
      ).vms[4]!.group!.members,
    ).toEqual(five);
  });
});
