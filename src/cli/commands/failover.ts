import type { Command } from "commander";
import { FailoverKind } from "../../gen/qreplica/v1/control.js";
import { controlClient, unary, type SiteTargetOptions } from "../siteClient.js";
import { formatTable } from "../table.js";
import { emit, fail } from "../output.js";

type Target = SiteTargetOptions & { json: boolean };

function withTarget(cmd: Command): Command {
  return cmd
    .option("--dir <dir>", "the replica site's directory on this host")
    .option("--site <host:port>", "the replica site's address")
    .option("--ca <file>", "CA certificate")
    .option("--cert <file>", "client certificate")
    .option("--key <file>", "client key")
    .option("--json", "JSON output", false);
}

export function registerFailover(program: Command): void {
  withTarget(
    program
      .command("failover <vm> [action]")
      .description("fail a VM over to this replica site (--test, --planned or --unplanned), or 'failover VM complete|cancel'")
      .option("--test", "test failover: a throwaway VM on an isolated network; replication continues")
      .option("--planned", "planned failover (the primary is shut down and its last changes shipped first)")
      .option("--unplanned", "unplanned failover: the primary may be gone; choose the latest or an older point")
      .option("--point <id>", "recovery point (latest when omitted)")
      .option("--no-start", "fail over without starting the VM"),
  ).action(async (vm: string, action: string | undefined, o: Target & { test?: boolean; planned?: boolean; unplanned?: boolean; point?: string; start: boolean }) => {
    try {
      const client = controlClient(o);
      if (action === "complete") {
        const r = await unary(client, client.completeFailover, { vmId: vm });
        emit(o.json, r, () => `VM ${vm}: failover complete; recovery points dropped: ${r.droppedRecoveryPointIds.join(", ") || "none"}`);
      } else if (action === "cancel") {
        const r = await unary(client, client.cancelFailover, { vmId: vm });
        emit(o.json, r, () => `VM ${vm}: failover cancelled, the failover VM stopped and its writes discarded; state ${r.state}`);
      } else if (action !== undefined) {
        throw new Error(`unknown failover action '${action}': use 'complete' or 'cancel'`);
      } else if ([o.test, o.planned, o.unplanned].filter(Boolean).length !== 1) {
        throw new Error("say which failover: exactly one of --test, --planned, --unplanned");
      } else if (o.test) {
        const r = await unary(client, client.startTestFailover, { vmId: vm, recoveryPointId: o.point ?? "" }, 120_000);
        emit(o.json, r, () =>
          formatTable(["test", "point", "vm", "running after ms", "serial log"], [[r.testId, r.recoveryPointId, r.vm?.name ?? "", Number(r.vm?.timeToRunningMs ?? 0), r.vm?.serialLog ?? ""]]) +
            `\nstop it with: qreplica test-failover stop ${vm} --test-id ${r.testId}`,
        );
      } else {
        const kind = o.planned ? FailoverKind.FAILOVER_KIND_PLANNED : FailoverKind.FAILOVER_KIND_UNPLANNED;
        const r = await unary(client, client.failover, { vmId: vm, kind, recoveryPointId: o.point ?? "", startVm: o.start }, 120_000);
        emit(o.json, r, () =>
          formatTable(["vm", "point", "generation", "running after ms", "serial log"], [[vm, r.recoveryPointId, Number(r.generation), r.vm ? Number(r.vm.timeToRunningMs) : "-", r.vm?.serialLog ?? "(not started)"]]) +
            `\nnext: 'qreplica failover ${vm} complete' to commit, or 'qreplica failover ${vm} cancel' to go back`,
        );
      }
      client.close();
    } catch (err) {
      fail(err, o.json);
    }
  });

  const test = program.command("test-failover").description("manage test failovers");
  withTarget(test.command("stop <vm>").description("stop a VM's test failovers (all, or one with --test-id) and discard their overlays"))
    .option("--test-id <id>", "only this test")
    .action(async (vm: string, o: Target & { testId?: string }) => {
      try {
        const client = controlClient(o);
        const r = await unary(client, client.stopTestFailover, { vmId: vm, testId: o.testId ?? "" }, 60_000);
        emit(o.json, r, () => `VM ${vm}: stopped test failover(s) ${r.stoppedTestIds.join(", ") || "(none running)"}`);
        client.close();
      } catch (err) {
        fail(err, o.json);
      }
    });
}
