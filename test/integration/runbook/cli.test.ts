import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getSqliteEventStore } from "../../../src/ledger/index.js";
import { executePlan, loadRunbook, planRunbook } from "../../../src/runbook/index.js";
import { addressFile } from "../../../src/site/siteConfig.js";
import { CLI, runCli, startDaemon, waitFor, type Daemon } from "../../helpers/processes.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";
import { FakeSite } from "../../unit/runbook/fakeSite.js";

const EXAMPLE = resolve(import.meta.dirname, "../../../examples/runbook.yaml");
let tmp: { path: string; cleanup(): void };
beforeAll(() => {
  tmp = makeTmpDir("qr-rbcli-");
});
afterAll(() => tmp.cleanup());

function file(name: string, lines: string[]): string {
  const path = join(tmp.path, name);
  writeFileSync(path, lines.join("\n") + "\n");
  return path;
}

const good = () =>
  file("good.yaml", [
    "name: shop",
    "site: { dir: ./site-b }",
    "failover: unplanned",
    "groups:",
    "  - name: db",
    "    vms: [{ vm: db1, point: rp-0003 }]",
    "    steps:",
    "      - wait: tcp-port",
    "        host: 127.0.0.1",
    "        port: 5432",
    "  - vms: [web1, { vm: web2, failover: planned }]",
    "    steps:",
    "      - confirm: Is the shop up?",
  ]);

describe("qreplica runbook validate / plan (the real CLI)", () => {
  it("validate: exit 0 for the shipped example and a good file", async () => {
    const ex = await runCli(["runbook", "validate", EXAMPLE]);
    expect(ex.code).toBe(0);
    expect(ex.stdout).toContain("runbook 'shop' is valid: 3 group(s), VMs db1, app1, app2, web1, 6 step(s)");
    const r = await runCli(["runbook", "validate", good(), "--json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ ok: true, runbook: "shop", groups: 2, vms: ["db1", "web1", "web2"], steps: 2 });
  });

  it("validate: exit 2 and every problem with its path, line and fix", async () => {
    const bad = file("bad.yaml", [
      "name: shop",
      "site: { dir: ./site-b }",
      "groups:",
      "  - vms: [db1]",
      "    steps:",
      "      - wait: guest-agent",
      "  - vms: [{ vm: web1, failover: test }]",
      "    steps:",
      "      - wait: tcp-port",
      "        host: 10.0.0.5",
      "        port: 99999",
      "      - hook: ./x.sh",
      "        timeout: 5",
    ]);
    const r = await runCli(["runbook", "validate", bad]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`qreplica: runbook ${bad} is not valid (4 problems):`);
    expect(r.stderr).toContain("groups[0].vms[0].failover (line 4): missing (set failover: test|planned|unplanned on the VM, or once at the top level)");
    expect(r.stderr).toContain("groups[0].steps[0].wait (line 6): 'guest-agent' is not supported yet");
    expect(r.stderr).toContain("groups[1].steps[0].port (line 11): must be 1-65535, not 99999 (port: 5432)");
    expect(r.stderr).toContain("groups[1].steps[1].timeout (line 13): unknown key (did you mean 'timeoutSeconds'?)");

    const j = await runCli(["runbook", "validate", bad, "--json"]);
    expect(j.code).toBe(2);
    expect(JSON.parse(j.stdout).problems.map((p: { path: string }) => p.path)).toEqual([
      "groups[0].vms[0].failover",
      "groups[0].steps[0].wait",
      "groups[1].steps[0].port",
      "groups[1].steps[1].timeout",
    ]);

    const syntax = await runCli(["runbook", "validate", file("syntax.yaml", ["name: shop", "groups: [", "  - x"])]);
    expect(syntax.code).toBe(2);
    expect(syntax.stderr).toMatch(/\(yaml\) \(line \d+\): .*\(fix the YAML syntax\)/);

    const missing = await runCli(["runbook", "validate", join(tmp.path, "nope.yaml")]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("cannot read runbook");
  });

  it("plan: prints the ordered steps and changes nothing; --test makes it a drill", async () => {
    const path = good();
    const r = await runCli(["runbook", "plan", path]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toBe("runbook 'shop' (real failover), 6 steps:");
    expect(lines.slice(3).map((l) => l.trim().split(/\s+/).slice(0, 2).join(" "))).toEqual([
      "1 preflight",
      "2 g1.vm.db1.failover",
      "3 g1.step1.wait",
      "4 g2.vm.web1.failover",
      "5 g2.vm.web2.failover",
      "6 g2.step1.confirm",
    ]);
    expect(r.stdout).toContain("unplanned failover of db1 to point rp-0003");
    expect(r.stdout).toContain("planned failover of web2 to the latest point");
    expect(r.stdout).toContain("wait until 127.0.0.1:5432 accepts TCP connections (timeout 300 s)");
    expect(existsSync(join(tmp.path, "site-b"))).toBe(false);

    const drill = await runCli(["runbook", "plan", path, "--test", "--json"]);
    expect(drill.code).toBe(0);
    const plan = JSON.parse(drill.stdout);
    expect(plan.test).toBe(true);
    expect(plan.steps.filter((s: { kind: string }) => s.kind === "failover").map((s: { vm: string; mode: string }) => `${s.vm}:${s.mode}`)).toEqual([
      "db1:test",
      "web1:test",
      "web2:test",
    ]);
    const text = await runCli(["runbook", "plan", path, "--test"]);
    expect(text.stdout).toContain("drill: every VM as a test failover on an isolated network; nothing in production is touched");

    expect((await runCli(["runbook", "plan", file("bad2.yaml", ["name: x"])])).code).toBe(2);
  });

  it("run: a site directory that is not a site is refused before anything happens (exit 2: invalid input)", async () => {
    const r = await runCli(["runbook", "run", good()]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("not a site directory");
  });

  it("show: prints the recorded steps of a run from a ledger file", async () => {
    const ledger = join(tmp.path, "ledger.sqlite");
    const store = getSqliteEventStore({ path: ledger });
    const rb = loadRunbook(file("show.yaml", ["name: shop", "site: { dir: ./site-b }", "failover: test", "groups:", "  - vms: [db1]", "    steps: [{ confirm: ok? }]"]));
    const out = await executePlan({ plan: planRunbook(rb, { test: false }), target: new FakeSite(["db1"]), store, file: "show.yaml" });
    await store.close();
    expect(out.status).toBe("stopped");
    const r = await runCli(["runbook", "show", out.runId, "--ledger", ledger]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`run ${out.runId} of runbook 'shop' (show.yaml)`);
    expect(r.stdout).toMatch(/g1\.vm\.db1\.failover\s+succeeded\s+1\s+[\d.]+ s\s+point rp-3, test t1, serial log \/nonexistent\/db1\.serial\.log/);
    expect(r.stdout).toMatch(/g1\.step1\.confirm\s+failed\s+1/);
    const j = await runCli(["runbook", "show", out.runId, "--ledger", ledger, "--json"]);
    expect(JSON.parse(j.stdout)).toMatchObject({
      runId: out.runId,
      status: "stopped",
      test: false,
      steps: [{ id: "preflight" }, { id: "g1.vm.db1.failover" }, { id: "g1.step1.confirm" }],
    });
    const none = await runCli(["runbook", "show", "nope", "--ledger", ledger]);
    expect(none.code).toBe(3);
    expect(none.stderr).toContain("no runbook run 'nope'");
  });
});

describe("qreplica runbook run / show / rollback against a real site server (no VMs)", { timeout: 120_000 }, () => {
  let site: Daemon | undefined;
  afterAll(async () => site?.kill("SIGTERM"));

  it("records the run in the site's ledger, stops with exit 4 at preflight, shows it and rolls it back", async () => {
    const siteDir = join(tmp.path, "site-b");
    for (const args of [
      ["pki", "create-ca", "--dir", join(tmp.path, "ca")],
      ["site", "init", "--dir", siteDir, "--name", "site-b", "--ca-dir", join(tmp.path, "ca"), "--listen", "127.0.0.1:0"],
    ]) {
      const r = await runCli(args);
      expect(r.code, r.stderr).toBe(0);
    }
    site = startDaemon(CLI, ["site", "serve", "--dir", siteDir], join(tmp.path, "site.log"));
    await waitFor("the site's address", () => (existsSync(addressFile(siteDir)) ? true : undefined), 30_000);

    const path = good();
    const run = await runCli(["runbook", "run", path, "--json"]);
    expect(run.code).toBe(4);
    const events = run.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    const runId = events[0].runId as string;
    expect(events.map((e) => e.type)).toEqual(["run-started", "step-started", "step-finished", "run-finished"]);
    expect(events[3]).toMatchObject({
      status: "stopped",
      stepId: "preflight",
      next: [
        `fix the cause, then continue from this step: qreplica runbook run ${path} --resume ${runId}`,
        `or undo what the run did: qreplica runbook rollback ${runId} --dir ${siteDir}`,
      ],
    });
    expect(events[3].error).toContain("VM db1: no replication relationship for VM 'db1' on site site-b");

    const human = await runCli(["runbook", "run", path, "--resume", runId]);
    expect(human.code).toBe(4);
    expect(human.stdout).toContain(`resuming run ${runId} of runbook 'shop': 6 steps, recorded in ledger stream runbook-${runId}`);
    expect(human.stdout).toMatch(/FAILED\s+preflight\s+\(\d+\.\d s\) VM db1: no replication relationship/);
    expect(human.stderr).toContain(`qreplica: run ${runId} stopped at step preflight`);

    const show = await runCli(["runbook", "show", runId, "--dir", siteDir, "--json"]);
    const shown = JSON.parse(show.stdout);
    expect(shown).toMatchObject({ status: "stopped", resumes: 1 });
    expect(shown.steps[0]).toMatchObject({ id: "preflight", status: "failed", attempts: 2 });
    expect(shown.steps.slice(1).every((s: { status: string }) => s.status === "pending")).toBe(true);

    // Recorded through the control plane, each event with its caller: the site's admin certificate (--dir).
    const store = getSqliteEventStore({ path: join(siteDir, "ledger.sqlite"), create: false });
    const recorded = await store.readStream(`runbook-${runId}`).finally(() => store.close());
    expect(recorded.length).toBeGreaterThan(3);
    for (const e of recorded) expect(e.metadata).toMatchObject({ actor: "site-b-admin", actorRole: "admin" });

    // A viewer's own certificate reads the run, and may not roll it back.
    const issued = await runCli(["pki", "issue", "--ca-dir", join(tmp.path, "ca"), "--name", "vic", "--role", "viewer", "--out-dir", join(tmp.path, "vic")]);
    expect(issued.code, issued.stderr).toBe(0);
    const viewer = [
      "--site",
      readFileSync(addressFile(siteDir), "utf8").trim(),
      "--ca",
      join(tmp.path, "ca", "ca.crt"),
      "--cert",
      join(tmp.path, "vic", "vic.crt"),
      "--key",
      join(tmp.path, "vic", "vic.key"),
    ];
    expect(JSON.parse((await runCli(["runbook", "show", runId, ...viewer, "--json"])).stdout)).toMatchObject({ status: "stopped" });
    const refused = await runCli(["runbook", "rollback", runId, ...viewer]);
    expect(refused.code).toBe(5);
    expect(refused.stderr).toContain("'vic' (role viewer) may not call AppendRunbookEvents");

    const rollback = await runCli(["runbook", "rollback", runId, "--dir", siteDir]);
    expect(rollback.code).toBe(0);
    expect(rollback.stdout).toContain(`run ${runId}: no failover to undo`);
    expect((await runCli(["runbook", "run", path, "--resume", runId])).stderr).toContain("was rolled back");
  });
});
