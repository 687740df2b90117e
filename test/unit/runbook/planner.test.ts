import { describe, expect, it } from "vitest";
import { planRunbook, validateRunbook, type Runbook } from "../../../src/runbook/index.js";

function runbook(): Runbook {
  const r = validateRunbook(
    {
      name: "shop",
      site: { dir: "/sites/b" },
      failover: "unplanned",
      groups: [
        { name: "db", vms: [{ vm: "db1", point: "rp-7" }], steps: [{ wait: "tcp-port", host: "10.0.0.5", port: 5432, timeoutSeconds: 30 }] },
        {
          vms: ["web1", { vm: "web2", failover: "planned" }, { vm: "lab", failover: "test" }],
          steps: [{ wait: "vm-running" }, { confirm: "Check the shop" }, { hook: "./hooks/smoke.sh", args: ["-q"], vm: "web1", timeoutSeconds: 10 }, { hook: "logger" }],
        },
      ],
    },
    { baseDir: "/rb" },
  );
  if (!r.ok) throw new Error(JSON.stringify(r.problems));
  return r.runbook;
}

describe("planRunbook", () => {
  it("lists exactly what a run does, in order, with stable ids", () => {
    const plan = planRunbook(runbook(), { test: false });
    expect(plan).toMatchObject({ runbook: "shop", test: false, site: { dir: "/sites/b" } });
    expect(plan.steps.map((s) => s.id)).toEqual([
      "preflight",
      "g1.vm.db1.failover",
      "g1.step1.wait",
      "g2.vm.web1.failover",
      "g2.vm.web2.failover",
      "g2.vm.lab.failover",
      "g2.step1.wait",
      "g2.step2.confirm",
      "g2.step3.hook",
      "g2.step4.hook",
    ]);
    const [preflight, db1, tcp, web1, web2, lab, running, confirm, smoke, logger] = plan.steps;
    expect(preflight).toMatchObject({
      kind: "preflight",
      vms: [
        { vm: "db1", mode: "unplanned", point: "rp-7" },
        { vm: "web1", mode: "unplanned" },
        { vm: "web2", mode: "planned" },
        { vm: "lab", mode: "test" },
      ],
    });
    expect(db1).toMatchObject({ kind: "failover", vm: "db1", mode: "unplanned", point: "rp-7", group: 1, groupName: "db", description: "unplanned failover of db1 to point rp-7" });
    expect(tcp).toMatchObject({ kind: "wait", wait: "tcp-port", host: "10.0.0.5", port: 5432, timeoutMs: 30_000 });
    expect(web1).toMatchObject({ mode: "unplanned", description: "unplanned failover of web1 to the latest point" });
    expect(web1).not.toHaveProperty("point");
    expect(web2).toMatchObject({ mode: "planned" });
    expect(lab).toMatchObject({ mode: "test", description: "test failover (isolated network) of lab to the latest point" });
    expect(running).toMatchObject({ wait: "vm-running", vms: ["web1", "web2", "lab"], timeoutMs: 300_000 });
    expect(confirm).toMatchObject({ kind: "confirm", prompt: "Check the shop" });
    expect(smoke).toMatchObject({ kind: "hook", command: "/rb/hooks/smoke.sh", args: ["-q"], cwd: "/rb", vm: "web1", groupVms: ["web1", "web2", "lab"], timeoutMs: 10_000 });
    // A bare command name is left to PATH; with several VMs in the group there is no QREPLICA_VM.
    expect(logger).toMatchObject({ kind: "hook", command: "logger" });
    expect(logger).not.toHaveProperty("vm");
    expect(plan.steps.some((s) => s.skip)).toBe(false);
  });

  it("--test turns every VM into a test failover and nothing else", () => {
    const real = planRunbook(runbook(), { test: false });
    const drill = planRunbook(runbook(), { test: true });
    expect(drill.test).toBe(true);
    expect(drill.steps.map((s) => s.id)).toEqual(real.steps.map((s) => s.id));
    const failovers = drill.steps.filter((s) => s.kind === "failover");
    expect(failovers.map((s) => (s.kind === "failover" ? s.mode : ""))).toEqual(["test", "test", "test", "test"]);
    expect(failovers[0]).toMatchObject({ vm: "db1", point: "rp-7" });
  });

  it("a resumed plan skips what succeeded and preflights only the VMs still to fail over", () => {
    const plan = planRunbook(runbook(), { test: false, resumeFrom: { runId: "r1", succeeded: new Set(["g1.vm.db1.failover", "g1.step1.wait", "g2.vm.web1.failover"]) } });
    expect(plan.resumedRunId).toBe("r1");
    expect(plan.steps.filter((s) => s.skip).map((s) => s.id)).toEqual(["g1.vm.db1.failover", "g1.step1.wait", "g2.vm.web1.failover"]);
    expect(plan.steps[1]!.skip).toBe("succeeded in run r1");
    expect(plan.steps[0]).toMatchObject({ id: "preflight", vms: [{ vm: "web2" }, { vm: "lab" }] });
  });
});
