import type { Command } from "commander";
import type { DrillReport } from "../../gen/qreplica/v1/control.js";
import { EXIT, InvalidCliArgumentError } from "../exitCodes.js";
import { parseDuration } from "../../policy/units.js";
import { emit, fail } from "../output.js";
import { controlClient, unary } from "../siteClient.js";
import { formatTable } from "../table.js";
import { withTarget, type Target } from "../target.js";

/** Long enough for the longest drill a policy allows to boot, check and stop. */
const WAIT_MS = 3 * 3600 * 1000;

export function drillJson(r: DrillReport) {
  return { ...r, timeToVerifiedMs: Number(r.timeToVerifiedMs), checks: r.checks.map((c) => ({ ...c, atMs: Number(c.atMs) })) };
}

/** "verified in 4.2 s" / "FAILED serialPattern": a point's drill in one cell. */
export function drillCell(r: DrillReport | undefined): string {
  if (!r) return "-";
  return r.result === "verified" ? `verified in ${(Number(r.timeToVerifiedMs) / 1000).toFixed(1)} s` : `FAILED ${r.failedCheck}`;
}

export function registerVerify(program: Command): void {
  withTarget(
    program
      .command("verify <vm>")
      .description(
        "verification drill now (role operator): a test failover of a point on the isolated network, the checks of the VM's policy (verification.checks), then the test VM is stopped; the result is recorded with the point",
      )
      .option("--point <id>", "the point to verify (the newest when omitted)")
      .option("--timeout <duration>", "this drill's timeout instead of the policy's verification.timeout (e.g. 30s, 10m)")
      .option("--wait", "wait for the drill's result and print it; exit status 1 when the point failed its drill", false),
  ).action(async (vm: string, o: Target & { point?: string; wait: boolean; timeout?: string }) => {
    try {
      const timeoutSeconds = o.timeout === undefined ? 0 : parseDuration(o.timeout);
      if (timeoutSeconds === undefined || timeoutSeconds < 0 || timeoutSeconds > 24 * 3600 || (o.timeout !== undefined && timeoutSeconds < 1)) {
        throw new InvalidCliArgumentError(`--timeout ${o.timeout} is not a duration from 1s to 24h; write e.g. 30s or 10m`);
      }
      const client = controlClient(o);
      const request = { vmId: vm, recoveryPointId: o.point ?? "", wait: o.wait, timeoutSeconds: Math.ceil(timeoutSeconds) };
      const r = await unary(client, client.verifyPoint, request, o.wait ? WAIT_MS : 120_000);
      client.close();
      const report = r.report;
      if (!report) {
        emit(o.json, r, () => `VM ${vm}: drill ${r.drillId} started on ${r.recoveryPointId}; its result: qreplica points ${vm} (or verify --wait)`);
        return;
      }
      emit(o.json, { drillId: r.drillId, recoveryPointId: r.recoveryPointId, report: drillJson(report) }, () => {
        const head =
          report.result === "verified"
            ? `VM ${vm}: ${report.recoveryPointId} verified in ${(Number(report.timeToVerifiedMs) / 1000).toFixed(1)} s (drill ${report.drillId})`
            : `VM ${vm}: ${report.recoveryPointId} FAILED its drill at the ${report.failedCheck} check: ${report.message} (drill ${report.drillId})`;
        const rows = report.checks.map((c) => [c.check, c.passed ? "passed" : "FAILED", `${(Number(c.atMs) / 1000).toFixed(1)} s`, c.detail]);
        return `${head}\n${formatTable(["check", "result", "at", "detail"], rows)}`;
      });
      if (report.result !== "verified") process.exitCode = EXIT.failed;
    } catch (err) {
      fail(err, o.json);
    }
  });
}
