import { appendFileSync, chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { FakeSite } from "./fakeSite.js";
import { Harness, makeRunbook } from "./helpers.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

let cleanup: (() => void) | undefined;
afterEach(() => cleanup?.());

function tmp(): string {
  const t = makeTmpDir("qr-rbs-");
  cleanup = t.cleanup;
  return t.path;
}

function script(dir: string, name: string, body: string): void {
  writeFileSync(join(dir, name), `#!/bin/sh\n${body}\n`);
  chmodSync(join(dir, name), 0o755);
}

describe("hook steps", () => {
  it("run next to the runbook with QREPLICA_* variables and their own env; a non-zero exit stops the run", async () => {
    const dir = tmp();
    script(dir, "check.sh", 'env | grep -E "^(QREPLICA_|APP_)" | sort > "$1"; echo checking; exit "${FAIL:-0}"');
    const out = join(dir, "env.txt");
    const rb = makeRunbook(
      {
        groups: [
          { name: "db", vms: ["db1"], steps: [{ hook: "./check.sh", args: [out], env: { APP_URL: "http://db" } }] },
          { vms: ["web1"], steps: [{ hook: "./check.sh", args: [out], env: { FAIL: 3 } }] },
        ],
      },
      dir,
    );
    const h = new Harness(rb, new FakeSite(["db1", "web1"], (vm) => `/logs/${vm}.log`));
    const run = await h.run();
    expect(run).toMatchObject({ status: "stopped", stepId: "g2.step1.hook" });
    expect(run.error).toContain(`${join(dir, "check.sh")} exited with code 3; its last output: checking`);
    const env = readFileSync(out, "utf8").trim().split("\n");
    expect(env).toEqual([
      "QREPLICA_FAILOVER=unplanned",
      "QREPLICA_GROUP=2",
      "QREPLICA_RECOVERY_POINT=rp-3",
      `QREPLICA_RUNBOOK=shop`,
      `QREPLICA_RUN_ID=${run.runId}`,
      "QREPLICA_SERIAL_LOG=/logs/web1.log",
      "QREPLICA_STEP_ID=g2.step1.hook",
      "QREPLICA_TEST=0",
      "QREPLICA_VM=web1",
      "QREPLICA_VMS=web1",
    ]);
    const rec = await h.record(run.runId);
    expect(rec.steps.find((s) => s.id === "g1.step1.hook")?.result).toEqual({ exitCode: 0, outputTail: "checking\n" });
  });

  it("a hook that outlives its timeout is killed with everything it started", async () => {
    const dir = tmp();
    script(dir, "slow.sh", "sleep 30 & sleep 30; echo never");
    const h = new Harness(makeRunbook({ groups: [{ vms: ["db1"], steps: [{ hook: "./slow.sh", timeoutSeconds: 0.3 }] }] }, dir), new FakeSite(["db1"]));
    const t0 = Date.now();
    const run = await h.run();
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(run.error).toContain(`${join(dir, "slow.sh")} did not finish within 0.3 s and was killed`);
  });

  it("a hook that cannot start says so", async () => {
    const h = new Harness(makeRunbook({ groups: [{ vms: ["db1"], steps: [{ hook: "./missing.sh" }] }] }, "/nonexistent-dir"), new FakeSite(["db1"]));
    const run = await h.run();
    expect(run.error).toMatch(/could not start \/nonexistent-dir\/missing\.sh: spawn .*ENOENT/);
  });
});

describe("serial-log waits", () => {
  it("wait until the failed-over VM's console prints the pattern", async () => {
    const dir = tmp();
    const log = join(dir, "db1.serial.log");
    writeFileSync(log, "SeaBIOS\n");
    const rb = makeRunbook({ groups: [{ vms: ["db1"], steps: [{ wait: "serial-log", vm: "db1", pattern: "^ready: \\d+$", timeoutSeconds: 5 }] }] });
    const h = new Harness(rb, new FakeSite(["db1"], () => log));
    setTimeout(() => appendFileSync(log, "booting\nready: 42\n"), 300);
    const run = await h.run();
    expect(run.status).toBe("succeeded");
    const waited = (await h.record(run.runId)).steps.find((s) => s.id === "g1.step1.wait")?.result as { waitedMs: number };
    expect(waited.waitedMs).toBeGreaterThanOrEqual(250);
  });

  it("times out naming the pattern and the log; an unreadable log is explained", async () => {
    const dir = tmp();
    const log = join(dir, "db1.serial.log");
    writeFileSync(log, "kernel panic\n");
    const rb = makeRunbook({ groups: [{ vms: ["db1"], steps: [{ wait: "serial-log", vm: "db1", pattern: "login:", timeoutSeconds: 0.3 }] }] });
    const run = await new Harness(rb, new FakeSite(["db1"], () => log)).run();
    expect(run.error).toContain(`timed out after 0.3 s: no match for /login:/ in db1's serial log ${log}`);
    const remote = await new Harness(rb, new FakeSite(["db1"])).run();
    expect(remote.error).toContain("the serial log /nonexistent/db1.serial.log cannot be read from this host (serial-log waits need the runbook run on the replica site's host)");
  });
});

describe("vm-running waits", () => {
  it("fail when a VM the run started is no longer running", async () => {
    const h = new Harness(makeRunbook({ groups: [{ vms: ["db1", "web1"], steps: [{ wait: "vm-running", timeoutSeconds: 0.2 }] }] }), new FakeSite(["db1", "web1"]));
    const site = h.site;
    const orig = site.failover.bind(site);
    site.failover = async (vm, kind, point) => {
      const r = await orig(vm, kind, point);
      if (vm === "web1") site.vms.get(vm)!.running = false; // crashed right after boot
      return r;
    };
    const run = await h.run();
    expect(run).toMatchObject({ status: "stopped", stepId: "g1.step1.wait" });
    expect(run.error).toContain("timed out after 0.2 s: VM web1 is not running");
  });
});
