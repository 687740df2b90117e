import { describe, expect, it } from "vitest";
import { rollbackRun, type RollbackProgress } from "../../../src/runbook/index.js";
import { FakeSite } from "./fakeSite.js";
import { Harness, makeRunbook } from "./helpers.js";

const threeVms = () => makeRunbook({ groups: [{ vms: ["db1"] }, { vms: ["app1", { vm: "web1", failover: "planned" }] }] });

async function rollback(h: Harness, runId: string) {
  const progress: RollbackProgress[] = [];
  const out = await rollbackRun({ store: h.store, target: h.site, runId, ledgerPath: "mem", onProgress: (e) => progress.push(e) });
  return { out, progress };
}

describe("rollbackRun", () => {
  it("a drill's rollback stops its test failovers, newest first, and is recorded", async () => {
    const h = new Harness(threeVms(), new FakeSite(["db1", "app1", "web1"]));
    const run = await h.run({ test: true });
    h.site.calls.length = 0;
    const { out, progress } = await rollback(h, run.runId);
    expect(out).toMatchObject({ ok: true, undone: ["g2.vm.web1.failover", "g2.vm.app1.failover", "g1.vm.db1.failover"], failed: [], alreadyClean: false });
    expect(h.site.calls.filter((c) => c.startsWith("stop"))).toEqual(["stopTestFailover web1", "stopTestFailover app1", "stopTestFailover db1"]);
    expect(h.site.calls.some((c) => c.startsWith("cancel"))).toBe(false);
    expect([...h.site.vms.values()].every((v) => v.tests.size === 0)).toBe(true);
    expect(progress.map((p) => p.type)).toEqual(["rollback-started", "undo-finished", "undo-finished", "undo-finished", "rollback-finished"]);
    const rec = await h.record(run.runId);
    expect(rec.status).toBe("rolled-back");
    expect(rec.steps.find((s) => s.id === "g1.vm.db1.failover")?.undo).toEqual({
      status: "undone",
      action: "stop test failover",
      detail: "VM db1: stopped test t1; its writes are discarded",
    });
    expect((await h.types(run.runId)).slice(-5)).toEqual([
      "RunbookRollbackStarted",
      "RunbookRollbackStep",
      "RunbookRollbackStep",
      "RunbookRollbackStep",
      "RunbookRollbackFinished",
    ]);

    // Again: nothing left to undo, nothing called.
    h.site.calls.length = 0;
    expect((await rollback(h, run.runId)).out).toMatchObject({ ok: true, alreadyClean: true });
    expect(h.site.calls).toEqual([]);
    await expect(h.resume(run.runId, { test: true })).rejects.toThrow("it was rolled back (rolled-back); start a new run without --resume");
  });

  it("a stopped real run's rollback cancels its failovers in reverse order, including an attempt the site did carry out", async () => {
    const h = new Harness(threeVms(), new FakeSite(["db1", "app1", "web1"]));
    h.site.failAfterFailover.add("web1");
    const run = await h.run();
    expect(run).toMatchObject({ status: "stopped", stepId: "g2.vm.web1.failover" });
    expect(run.error).toContain("QEMU did not start");
    expect(h.site.vms.get("web1")!.state).toBe("failed-over-waiting-completion");
    h.site.calls.length = 0;
    const { out } = await rollback(h, run.runId);
    expect(out).toMatchObject({ ok: true, undone: ["g2.vm.web1.failover", "g2.vm.app1.failover", "g1.vm.db1.failover"] });
    expect(h.site.calls.filter((c) => c.startsWith("cancel"))).toEqual(["cancelFailover web1", "cancelFailover app1", "cancelFailover db1"]);
    expect([...h.site.vms.values()].map((v) => v.state)).toEqual(["replicating", "replicating", "replicating"]);
  });

  it("leaves alone what the run did not do, and reports what cannot be undone; a second rollback retries only that", async () => {
    const h = new Harness(threeVms(), new FakeSite(["db1", "app1", "web1"]));
    h.site.failNext.add("failover:web1"); // refused before anything changed on the site
    const run = await h.run();
    expect(run.stepId).toBe("g2.vm.web1.failover");
    await h.site.completeFailover("app1"); // the operator committed app1 meanwhile
    h.site.calls.length = 0;
    const { out } = await rollback(h, run.runId);
    expect(out.ok).toBe(false);
    expect(out.undone).toEqual(["g1.vm.db1.failover"]);
    expect(out.failed).toEqual([
      {
        stepId: "g2.vm.app1.failover",
        error: "VM app1: its failover was completed and can no longer be cancelled; fail back with a planned failover to the original site instead",
      },
    ]);
    const rec = await h.record(run.runId);
    expect(rec.status).toBe("rollback-incomplete");
    expect(rec.steps.find((s) => s.id === "g2.vm.web1.failover")?.undo).toMatchObject({
      status: "nothing-to-undo",
      detail: "VM web1: the failed attempt did not fail it over (state replicating, generation 1)",
    });
    expect(h.site.calls.filter((c) => c.startsWith("cancel"))).toEqual(["cancelFailover db1"]);

    h.site.calls.length = 0;
    const again = await rollback(h, run.runId);
    expect(again.out.failed.map((f) => f.stepId)).toEqual(["g2.vm.app1.failover"]);
    expect(h.site.calls).toEqual(["getStatus app1"]);
  });

  it("an unknown run id names the ledger it looked in", async () => {
    const h = new Harness(threeVms(), new FakeSite([]));
    await expect(rollback(h, "nope")).rejects.toMatchObject({ code: "RUNBOOK_RUN_NOT_FOUND", message: expect.stringContaining("no runbook run 'nope' in the ledger mem") });
  });
});
