/**
 * DrillService against a real (in-memory) ledger and a scripted FailoverService: the result is
 * recorded while the test holds the point, the test is stopped whatever happened (a failed check,
 * a VM that could not be launched, a cancelled drill), one drill per VM, refusals record nothing.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { createLogger } from "../../../../src/common/logger.js";
import { executeCommand, getInMemoryEventStore, loadRelationship, startTestFailover, stopTestFailover, type EventStore } from "../../../../src/ledger/index.js";
import type { VerificationPolicy } from "../../../../src/policy/types.js";
import { DrillService } from "../../../../src/site/drills/drillService.js";
import { DrillRunningError, DrillsStoppedError, VerificationNotConfiguredError } from "../../../../src/site/drills/errors.js";
import type { FailoverService } from "../../../../src/site/failover/failoverService.js";
import { VmLaunchError, type SiteVm } from "../../../../src/site/launcher/index.js";
import { makeTmpDir } from "../../../helpers/tmpDir.js";
import { enabled, incremental, initialCommitted, initialStarted } from "../../ledgerDomain/fixtures.js";

const VM = "web1";
const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** Test failovers recorded in the ledger as the real service does; the "VM" (seen as a launcher's VM without a monitor) prints `serial` to its log. */
function scriptedFailovers(store: EventStore, dir: string, opts: { serial?: string; launchFails?: boolean }) {
  const stopped: string[] = [];
  const vms = new Map<string, SiteVm>();
  let n = 0;
  const service = {
    async startTest(vmId: string, pointId: string | undefined) {
      const testId = `t${++n}`;
      await executeCommand(store, vmId, (s) => startTestFailover(s, { testId, ...(pointId ? { pointId } : {}), startedAt: new Date().toISOString() }));
      if (opts.launchFails) {
        await executeCommand(store, vmId, (s) => stopTestFailover(s, { testId, stoppedAt: new Date().toISOString() }));
        throw new VmLaunchError(`test-${vmId}-${testId}`, "QEMU said: could not open disk image");
      }
      const serialLogPath = join(dir, `${testId}.serial.log`);
      writeFileSync(serialLogPath, opts.serial ?? "");
      const vm = { launcher: "libvirt", serialLogPath } as unknown as SiteVm;
      vms.set(testId, vm);
      return { testId, pointId: pointId ?? "", vm: { name: testId, qmpSocket: "", serialLog: serialLogPath, pid: 1, timeToRunningMs: 1, diskImages: [] } };
    },
    testVm: (_vmId: string, testId: string) => vms.get(testId),
    isRunning: async () => true,
    async stopTests(vmId: string, testId: string) {
      stopped.push(testId);
      vms.delete(testId);
      await executeCommand(store, vmId, (s) => stopTestFailover(s, { testId, stoppedAt: new Date().toISOString() }));
      return [testId];
    },
  };
  return { service: service as unknown as FailoverService, stopped };
}

async function setup(opts: { serial?: string; launchFails?: boolean; verification?: VerificationPolicy | undefined; timeoutSeconds?: number }) {
  const store = getInMemoryEventStore();
  for (const d of [enabled, initialStarted, initialCommitted, incremental(2)]) await executeCommand(store, VM, d);
  const tmp = makeTmpDir("qr-drillsvc-");
  cleanups.push(tmp.cleanup);
  const f = scriptedFailovers(store, tmp.path, opts);
  const verification =
    "verification" in opts ? opts.verification : { everySeconds: 3600, windowSeconds: 7200, timeoutSeconds: opts.timeoutSeconds ?? 2, checks: { serialPattern: "^READY$" } };
  const drills = new DrillService({
    store,
    failovers: f.service,
    verificationOf: () => ({ policyName: "gold", verification }),
    serialize: (_vm, fn) => fn(),
    logger: createLogger("test"),
  });
  return { store, drills, stopped: f.stopped, state: async () => (await loadRelationship(store, VM)).state };
}

describe("DrillService", () => {
  it("verifies the newest point, records it while the test holds the point, then stops the test", async () => {
    const t = await setup({ serial: "SeaBIOS\r\nREADY\r\n" });
    const d = await t.drills.start(VM, { trigger: "schedule" });
    expect(d.pointId).toBe("rp-2");
    const report = await d.done;
    expect(report.message).toBeUndefined();
    expect(report).toMatchObject({ result: "verified", pointId: "rp-2", trigger: "schedule" });
    expect(report.timeToVerifiedMs).toBe(report.checks.at(-1)!.atMs);
    const s = await t.state();
    expect(s.lastVerified).toMatchObject({ drillId: d.drillId, pointId: "rp-2" });
    expect(t.stopped).toEqual([d.testId]);
    expect(s.testFailovers).toEqual({});
    expect(t.drills.runningDrill(VM)).toBeUndefined();
  });

  it("a failing check is recorded with its name and the test is stopped", async () => {
    const t = await setup({ serial: "Boot failed\r\n", timeoutSeconds: 1 });
    const d = await t.drills.start(VM, { pointId: "rp-1", trigger: "operator" });
    const report = await d.done;
    expect(report).toMatchObject({ result: "failed", failedCheck: "serialPattern", pointId: "rp-1" });
    expect((await t.state()).lastDrill).toMatchObject({ result: "failed", failedCheck: "serialPattern" });
    expect(t.stopped).toEqual([d.testId]);
  });

  it("a VM that cannot be launched from the point fails 'running', recorded without a test", async () => {
    const t = await setup({ launchFails: true });
    const d = await t.drills.start(VM, { trigger: "schedule" });
    expect(d.testId).toBeUndefined();
    const report = await d.done;
    expect(report).toMatchObject({ result: "failed", failedCheck: "running" });
    expect(report.message).toMatch(/could not open disk image/);
    expect((await t.state()).lastDrill?.failedCheck).toBe("running");
    expect(t.stopped).toEqual([]);
  });

  it("one drill per VM; refusals (no verification, unknown point) record nothing and hold nothing", async () => {
    const t = await setup({ serial: "", timeoutSeconds: 60 });
    const first = await t.drills.start(VM, { trigger: "schedule" });
    await expect(t.drills.start(VM, { trigger: "operator" })).rejects.toThrow(DrillRunningError);
    await t.drills.stop();
    expect(await first.done).toMatchObject({ result: "failed", failedCheck: "serialPattern", message: expect.stringMatching(/the drill was cancelled/) });
    expect(t.stopped).toEqual([first.testId]);
    await expect(t.drills.start(VM, { trigger: "operator" })).rejects.toThrow(DrillsStoppedError);

    const u = await setup({ verification: undefined });
    await expect(u.drills.start(VM, { trigger: "operator" })).rejects.toThrow(VerificationNotConfiguredError);
    const v = await setup({ serial: "READY\n" });
    await expect(v.drills.start(VM, { pointId: "rp-9", trigger: "operator" })).rejects.toThrow(/no recovery point rp-9/);
    expect(v.drills.runningDrill(VM)).toBeUndefined();
    expect((await v.state()).lastDrill).toBeUndefined();
    expect(await (await v.drills.start(VM, { trigger: "operator" })).done).toMatchObject({ result: "verified" });
  });
});
