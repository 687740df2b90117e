import type net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { RunbookResumeRefusedError, readRun, resumeOptions } from "../../../src/runbook/index.js";
import { FakeSite } from "./fakeSite.js";
import { Harness, closedPort, listen, makeRunbook } from "./helpers.js";

let server: net.Server | undefined;
afterEach(async () => {
  await new Promise((r) => (server ? server.close(r) : r(undefined)));
  server = undefined;
});

async function twoGroups() {
  const port = await closedPort();
  const runbook = makeRunbook({
    groups: [
      {
        name: "db",
        vms: ["db1"],
        steps: [
          { wait: "vm-running", timeoutSeconds: 1 },
          { wait: "tcp-port", host: "127.0.0.1", port, timeoutSeconds: 1 },
        ],
      },
      { name: "web", vms: [{ vm: "web1", failover: "planned" }], steps: [{ wait: "vm-running", timeoutSeconds: 1 }] },
    ],
  });
  return { port, h: new Harness(runbook, new FakeSite(["db1", "web1"])) };
}

describe("executePlan", () => {
  it("stops at a failing wait, records it, and --resume continues from that step once it is fixed", async () => {
    const { port, h } = await twoGroups();
    const first = await h.run();
    expect(first.status).toBe("stopped");
    expect(first.stepId).toBe("g1.step2.wait");
    expect(first.error).toContain(`run ${first.runId} stopped at step g1.step2.wait (wait until 127.0.0.1:${port} accepts TCP connections (timeout 1 s))`);
    expect(first.error).toContain(`timed out after 1 s: 127.0.0.1:${port} does not accept connections (ECONNREFUSED)`);
    expect(first.next).toEqual([
      `fix the cause, then continue from this step: qreplica runbook run shop.yaml --resume ${first.runId}`,
      `or undo what the run did: qreplica runbook rollback ${first.runId} --dir /sites/b`,
    ]);
    // Nothing of group 2 happened.
    expect(h.site.calls.filter((c) => c.startsWith("failover"))).toEqual(["failover db1 unplanned"]);

    const recorded = await h.record(first.runId);
    expect(recorded.status).toBe("stopped");
    expect(recorded.stopped).toMatchObject({ stepId: "g1.step2.wait" });
    expect(recorded.steps.map((s) => [s.id, s.status])).toEqual([
      ["preflight", "succeeded"],
      ["g1.vm.db1.failover", "succeeded"],
      ["g1.step1.wait", "succeeded"],
      ["g1.step2.wait", "failed"],
      ["g2.vm.web1.failover", "pending"],
      ["g2.step1.wait", "pending"],
    ]);
    expect(recorded.steps[1]!.result).toMatchObject({ vm: "db1", mode: "unplanned", pointId: "rp-3", generation: 2, launched: { serialLog: "/nonexistent/db1.serial.log" } });
    expect(recorded.steps[3]!.durationMs).toBeGreaterThanOrEqual(1000);
    expect(await h.types(first.runId)).toEqual([
      "RunbookRunStarted",
      ...Array(3).fill(["RunbookStepStarted", "RunbookStepSucceeded"]).flat(),
      "RunbookStepStarted",
      "RunbookStepFailed",
      "RunbookRunStopped",
    ]);
    // Progress: one line as each step starts and one as it ends, then the outcome.
    const kinds = h.progress.map((e) => (e.type === "step-finished" ? `${e.stepId}:${e.status}` : e.type === "step-started" ? `${e.stepId}:start` : e.type));
    expect(kinds).toEqual([
      "run-started",
      "preflight:start",
      "preflight:succeeded",
      "g1.vm.db1.failover:start",
      "g1.vm.db1.failover:succeeded",
      "g1.step1.wait:start",
      "g1.step1.wait:succeeded",
      "g1.step2.wait:start",
      "g1.step2.wait:failed",
      "run-finished",
    ]);

    // The operator fixes the cause: the database now listens.
    server = await listen(port);
    h.progress.length = 0;
    const second = await h.resume(first.runId);
    expect(second).toMatchObject({ runId: first.runId, status: "succeeded" });
    expect(second.rtoMs).toBeGreaterThan(1000);
    expect(h.site.calls.filter((c) => c.startsWith("failover"))).toEqual(["failover db1 unplanned", "failover web1 planned"]);
    expect(h.progress.filter((e) => e.type === "step-finished").map((e) => e.type === "step-finished" && `${e.stepId}:${e.status}`)).toEqual([
      "preflight:succeeded",
      "g1.vm.db1.failover:skipped",
      "g1.step1.wait:skipped",
      "g1.step2.wait:succeeded",
      "g2.vm.web1.failover:succeeded",
      "g2.step1.wait:succeeded",
    ]);
    expect(second.next).toEqual([`commit: qreplica failover <vm> complete --dir /sites/b for db1, web1`, `or go back: qreplica runbook rollback ${first.runId} --dir /sites/b`]);

    const done = await h.record(first.runId);
    expect(done).toMatchObject({ status: "succeeded", resumes: 1, rtoMs: second.rtoMs });
    expect(done.steps.find((s) => s.id === "g1.step2.wait")).toMatchObject({ status: "succeeded", attempts: 2 });
    expect(done.steps.every((s) => s.status === "succeeded")).toBe(true);
    const events = await h.store.readStream(`runbook-${first.runId}`);
    expect(events.filter((e) => e.type === "RunbookStepSkipped").map((e) => e.data.stepId)).toEqual(["g1.vm.db1.failover", "g1.step1.wait"]);
    expect(events.find((e) => e.type === "RunbookRtoMeasured")?.data).toMatchObject({ rtoMs: second.rtoMs, lastStepId: "g2.step1.wait", includesStops: true });
    expect(events.at(-1)!.type).toBe("RunbookRunSucceeded");

    await expect(h.resume(first.runId)).rejects.toThrow(/already succeeded/);
  });

  it("a drill fails every VM over as a test and never touches production", async () => {
    const h = new Harness(
      makeRunbook({ groups: [{ vms: ["db1"], steps: [{ wait: "vm-running" }] }, { vms: [{ vm: "web1", failover: "planned" }] }] }),
      new FakeSite(["db1", "web1"]),
    );
    const out = await h.run({ test: true });
    expect(out.status).toBe("succeeded");
    expect(h.site.calls.filter((c) => !c.startsWith("getStatus") && !c.startsWith("list"))).toEqual(["startTestFailover db1", "startTestFailover web1"]);
    expect([...h.site.vms.values()].map((v) => v.state)).toEqual(["replicating", "replicating"]);
    expect(out.next).toEqual([`end the drill (stop the test VMs, discard their writes): qreplica runbook rollback ${out.runId} --dir /sites/b`]);
    const run = await h.record(out.runId);
    expect(run.test).toBe(true);
    expect(run.steps[1]!.result).toMatchObject({ mode: "test", testId: "t1", pointId: "rp-3" });
  });

  it("preflight refuses unknown VMs and missing points before anything changes", async () => {
    const h = new Harness(makeRunbook({ groups: [{ vms: [{ vm: "db1", point: "rp-9" }, "ghost"] }] }), new FakeSite(["db1"]));
    const out = await h.run();
    expect(out).toMatchObject({ status: "stopped", stepId: "preflight" });
    expect(out.error).toContain("VM db1 has no recovery point 'rp-9' (it has rp-1, rp-2, rp-3): fix its point in the runbook");
    expect(out.error).toContain("VM ghost: no replication relationship for VM 'ghost' on site fake");
    expect(h.site.calls.some((c) => c.startsWith("failover"))).toBe(false);
  });

  it("a VM's point may be last-clean: preflight leaves it to the site's ledger, which the failover step asks for it", async () => {
    const h = new Harness(makeRunbook({ groups: [{ vms: [{ vm: "db1", point: "last-clean" }] }] }), new FakeSite(["db1"]));
    const out = await h.run();
    expect(out.status).toBe("succeeded");
    const run = await h.record(out.runId);
    expect(run.steps[1]).toMatchObject({ result: { vm: "db1", pointId: "last-clean" } });
  });

  it("a confirm step without --yes and without a terminal stops there; resuming with --yes goes on", async () => {
    const h = new Harness(makeRunbook({ groups: [{ vms: ["db1"], steps: [{ confirm: "Is the database consistent?" }] }, { vms: ["web1"] }] }), new FakeSite(["db1", "web1"]));
    const out = await h.run();
    expect(out).toMatchObject({ status: "stopped", stepId: "g1.step1.confirm" });
    expect(out.error).toContain(`needs the operator to confirm: "Is the database consistent?". Nobody can answer here (no terminal): do what it asks, then resume with --yes`);
    expect(out.next[0]).toBe(`fix the cause, then continue from this step: qreplica runbook run shop.yaml --resume ${out.runId} --yes`);
    expect(h.site.calls).not.toContain("failover web1");

    const declined = await h.resume(out.runId, { ask: async () => false });
    expect(declined.error).toContain(`the operator did not confirm: "Is the database consistent?"`);
    const asked: string[] = [];
    const yes = await h.resume(out.runId, { ask: async (p) => (asked.push(p), true) });
    expect(yes.status).toBe("succeeded");
    expect(asked).toEqual(["Is the database consistent?"]);
    expect((await h.record(out.runId)).steps.find((s) => s.kind === "confirm")?.result).toEqual({ confirmedBy: "operator" });

    const h2 = new Harness(h.runbook, new FakeSite(["db1", "web1"]));
    expect((await h2.run({ yes: true })).status).toBe("succeeded");
  });

  it("resume keeps the recorded mode: a drill stays a drill, a real run cannot become one", async () => {
    const h = new Harness(makeRunbook({ groups: [{ vms: ["db1"], steps: [{ confirm: "go?" }] }, { vms: ["web1"] }] }), new FakeSite(["db1", "web1"]));
    const drill = await h.run({ test: true });
    const resumed = await h.resume(drill.runId, { test: false, yes: true });
    expect(resumed.status).toBe("succeeded");
    expect(h.site.calls.filter((c) => c.startsWith("failover"))).toEqual([]);
    expect(h.site.calls).toContain("startTestFailover web1");

    const real = await h.run({ test: false });
    const run = (await readRun(h.store, real.runId))!;
    expect(() => resumeOptions(run, "shop", true)).toThrow(RunbookResumeRefusedError);
    expect(() => resumeOptions(run, "shop", true)).toThrow("it is a real failover run, not a drill: resume it without --test");
    expect(() => resumeOptions(run, "other", false)).toThrow("it ran runbook 'shop', not 'other'");
  });

  it("two processes cannot drive the same run: the ledger's optimistic concurrency refuses the second", async () => {
    const h = new Harness(makeRunbook({ groups: [{ vms: ["db1"], steps: [{ confirm: "go?" }] }] }), new FakeSite(["db1"]));
    const out = await h.run();
    const stale = (await readRun(h.store, out.runId))!;
    await h.resume(out.runId, { ask: async () => false });
    await expect(h.run({ resume: stale, yes: true })).rejects.toThrow(/version/i);
  });

  it("Ctrl-C (abort) fails the step in flight and records the run as stopped", async () => {
    const port = await closedPort();
    const h = new Harness(makeRunbook({ groups: [{ vms: ["db1"], steps: [{ wait: "tcp-port", host: "127.0.0.1", port, timeoutSeconds: 60 }] }] }), new FakeSite(["db1"]));
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 300);
    const t0 = Date.now();
    const out = await h.run({ signal: abort.signal });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(out).toMatchObject({ status: "stopped", stepId: "g1.step1.wait" });
    expect(out.error).toContain("interrupted by the operator");
    expect((await h.record(out.runId)).status).toBe("stopped");
  });
});
