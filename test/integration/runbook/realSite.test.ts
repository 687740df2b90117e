import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { readCounters } from "../../../guest/index.js";
import { getSqliteEventStore, relationshipStream } from "../../../src/ledger/index.js";
import { runCli, waitFor } from "../../helpers/processes.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";
import { setupTwoSites, type TwoSites } from "../../helpers/twoSites.js";

const MiB = 1024 * 1024;
let env: TwoSites | undefined;
let app: net.Server | undefined;
const tmp = makeTmpDir("qr-rbe-");
afterAll(async () => {
  app?.close();
  await env?.stopAll();
  if (!process.env.QR_KEEP) tmp.cleanup();
});

async function relationshipEvents(t: TwoSites): Promise<string[]> {
  const store = getSqliteEventStore({ path: join(t.siteB, "ledger.sqlite"), create: false });
  try {
    return (await store.readStream(relationshipStream("vm1"))).map((e) => e.type);
  } finally {
    await store.close();
  }
}

const jsonLines = (out: string) =>
  out
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Record<string, unknown>);

describe("runbooks against a real replica site (counter guest, qemu-system-x86_64)", { timeout: 600_000 }, () => {
  it("a two-group drill stops at a failing wait, resumes once it is satisfied, records its RTO, and rolls back; then a real failover is cancelled by rollback", async () => {
    env = await setupTwoSites(tmp.path, { diskBytes: 8 * MiB, intervalSeconds: 1, counterGuest: true });
    const t = env;
    await t.startSite(t.siteB);
    t.startAgent();
    await waitFor("two recovery points", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 180_000);

    // A port nothing listens on yet: the application "is not up" until the test opens it.
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
    const appPort = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    app = net.createServer((sock) => sock.end());

    writeFileSync(join(tmp.path, "hook.sh"), '#!/bin/sh\necho "$QREPLICA_VM $QREPLICA_TEST $QREPLICA_SERIAL_LOG" > "$1"\n');
    chmodSync(join(tmp.path, "hook.sh"), 0o755);
    const file = join(tmp.path, "app.yaml");
    writeFileSync(
      file,
      [
        "name: counter-app",
        "site: { dir: ./site-b }",
        "failover: unplanned",
        "groups:",
        "  - name: counter",
        "    vms: [vm1]",
        "    steps:",
        "      - wait: vm-running",
        "        timeoutSeconds: 60",
        "      - wait: serial-log",
        "        vm: vm1",
        "        pattern: '^QREPLICA-COUNTER \\d+'",
        "        timeoutSeconds: 120",
        "      - hook: ./hook.sh",
        "        args: [hook.out]",
        "  - name: sign-off",
        "    steps:",
        "      - wait: tcp-port",
        "        host: 127.0.0.1",
        `        port: ${appPort}`,
        "        timeoutSeconds: 3",
        "      - confirm: Does the counter app look right?",
        "",
      ].join("\n"),
    );

    // --- the drill: test failover only, stopped by the failing wait of the second group ---
    const first = await runCli(["runbook", "run", file, "--test", "--json"]);
    expect(first.code, first.stderr).toBe(4);
    const events = jsonLines(first.stdout);
    const runId = events[0]!.runId as string;
    expect(events.at(-1)).toMatchObject({ type: "run-finished", status: "stopped", stepId: "g2.step1.wait" });
    const during = await t.relationship();
    expect(Object.keys(during.testFailovers)).toHaveLength(1);
    expect(during.state).toBe("replicating");
    const [hookVm, hookTest, serialLog] = readFileSync(join(tmp.path, "hook.out"), "utf8").trim().split(" ");
    expect([hookVm, hookTest]).toEqual(["vm1", "1"]);
    expect(readCounters(serialLog!).length).toBeGreaterThan(0);

    // The application comes up: the wait is satisfied on resume, and --yes answers the confirm.
    await new Promise<void>((r) => app!.listen(appPort, "127.0.0.1", r));
    const resumed = await runCli(["runbook", "run", file, "--resume", runId, "--yes"]);
    expect(resumed.code, resumed.stderr + resumed.stdout).toBe(0);
    expect(resumed.stdout).toContain(`run ${runId} is a drill: resuming it as a drill`);
    expect(resumed.stdout).toMatch(/skipped\s+g1\.vm\.vm1\.failover/);
    expect(resumed.stdout).toMatch(/measured RTO \d+\.\d s/);
    const shown = JSON.parse((await runCli(["runbook", "show", runId, "--dir", t.siteB, "--json"])).stdout);
    expect(shown).toMatchObject({ status: "succeeded", test: true, resumes: 1 });
    expect(shown.rtoMs).toBeGreaterThan(0);

    const rolledBack = await runCli(["runbook", "rollback", runId, "--dir", t.siteB]);
    expect(rolledBack.code, rolledBack.stderr).toBe(0);
    expect(rolledBack.stdout).toMatch(/undone\s+g1\.vm\.vm1\.failover\s+stop test failover: VM vm1: stopped test/);
    expect(Object.keys((await t.relationship()).testFailovers)).toEqual([]);
    expect(await relationshipEvents(t)).toEqual(expect.arrayContaining(["TestFailoverStarted", "TestFailoverRunning", "TestFailoverStopped"]));

    // --- the same runbook for real: an unplanned failover, then rolled back (cancelled) ---
    const real = await runCli(["runbook", "run", file, "--yes", "--json"]);
    expect(real.code, real.stderr + real.stdout).toBe(0);
    const realId = jsonLines(real.stdout)[0]!.runId as string;
    const failedOver = await t.relationship();
    expect(failedOver.state).toBe("failed-over-waiting-completion");
    expect(failedOver.generation).toBe(2);
    const undo = await runCli(["runbook", "rollback", realId, "--dir", t.siteB, "--json"]);
    expect(undo.code, undo.stderr + undo.stdout).toBe(0);
    expect(jsonLines(undo.stdout).find((e) => e.type === "undo-finished")).toMatchObject({ status: "undone", action: "cancel failover" });
    expect((await t.relationship()).state).toBe("replicating");
    expect(await relationshipEvents(t)).toEqual(expect.arrayContaining(["FailedOver", "FailoverCancelled"]));
  });
});
