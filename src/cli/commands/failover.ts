import { resolve } from "node:path";
import type { Command } from "commander";
import { FailoverKind } from "../../gen/qreplica/v1/control.js";
import { InvalidCliArgumentError } from "../exitCodes.js";
import { controlClient, readAddress, unary } from "../siteClient.js";
import { formatTable } from "../table.js";
import { emit, fail } from "../output.js";
import { withTarget, type Target } from "../target.js";
import { reverseAgentLogFile } from "../../site/failover/reverseAgent.js";
import { runDir } from "../../site/siteConfig.js";
import type { ControlServiceClient, GetStatusResponse } from "../../gen/qreplica/v1/control.js";
import { watchCycles } from "../cycleWatch.js";
import { progressReporter, type ProgressMode } from "../progress.js";
import { waitUntilReplicating, withProgress } from "./wait.js";

const TARGET_HELP = { dir: "the replica site's directory on this host", site: "the replica site's address" };

export function registerFailover(program: Command): void {
  withProgress(
    withTarget(
      program
        .command("failover <vm> [action]")
        .description("fail a VM over to this replica site (--test, --planned or --unplanned), or 'failover VM complete|cancel'")
        .option("--test", "test failover: a throwaway VM on an isolated network; replication continues")
        .option("--planned", "planned failover: the primary's agent stops the VM and ships a final cycle; zero data loss")
        .option("--primary-dir <dir>", "with --planned: the old primary's site directory; reverse replication to it starts automatically")
        .option("--unplanned", "unplanned failover: the primary may be gone; choose the latest or an older point")
        .option("--point <id>", "recovery point (latest when omitted); 'last-clean': the newest point before the first suspect one")
        .option("--no-start", "fail over without starting the VM"),
      TARGET_HELP,
    ),
  ).action(
    async (
      first: string,
      second: string | undefined,
      o: Target & { test?: boolean; planned?: boolean; unplanned?: boolean; point?: string; start: boolean; primaryDir?: string; progress: ProgressMode },
    ) => {
      // Both 'failover complete VM' and 'failover VM complete' read naturally.
      const [vm, action] = second !== undefined && (first === "complete" || first === "cancel") ? [second, first] : [first, second];
      try {
        const client = controlClient(o);
        if (action === "complete") {
          const r = await unary(client, client.completeFailover, { vmId: vm });
          emit(o.json, r, () => `VM ${vm}: failover complete; recovery points dropped: ${r.droppedRecoveryPointIds.join(", ") || "none"}`);
        } else if (action === "cancel") {
          const r = await unary(client, client.cancelFailover, { vmId: vm });
          emit(o.json, r, () =>
            r.downstreamFenceLifted
              ? `VM ${vm}: the failover at the site this one forwards to is cancelled here too: its primary's agent is accepted again and forwarding goes on; state ${r.state}`
              : `VM ${vm}: failover cancelled, the failover VM stopped and its writes discarded; state ${r.state}`,
          );
        } else if (action !== undefined) {
          throw new Error(`unknown failover action '${action}': use 'complete' or 'cancel'`);
        } else if ([o.test, o.planned, o.unplanned].filter(Boolean).length !== 1) {
          throw new Error("say which failover: exactly one of --test, --planned, --unplanned");
        } else if (o.test) {
          const r = await unary(client, client.startTestFailover, { vmId: vm, recoveryPointId: o.point ?? "" }, 120_000);
          emit(
            o.json,
            r,
            () =>
              formatTable(
                ["test", "point", "vm", "running after ms", "serial log"],
                [[r.testId, r.recoveryPointId, r.vm?.name ?? "", Number(r.vm?.timeToRunningMs ?? 0), r.vm?.serialLog ?? ""]],
              ) + `\nstop it with: qreplica test-failover stop ${vm} --test-id ${r.testId}`,
          );
        } else if (o.planned) {
          if (o.primaryDir) await refuseReverseWhileExtended(client, vm, o.dir ?? "SITE_DIR");
          const r = await withCycleProgress(client, vm, o.progress, "asking the primary's agent to stop the VM and ship its final cycle", () =>
            unary(client, client.failover, { vmId: vm, kind: FailoverKind.FAILOVER_KIND_PLANNED, recoveryPointId: "", startVm: o.start }, 6 * 60_000),
          );
          let reverse = "";
          if (o.primaryDir) {
            // Reverse replication starts right away, seeded with the stopped primary's disks.
            const old = controlClient({ dir: o.primaryDir });
            const status = await unary(client, client.getStatus, { vmId: vm });
            await unary(old, old.prepareReverseReplication, {
              vmId: vm,
              generation: r.generation,
              primarySiteId: status.siteId,
              primaryIdentity: status.siteId,
              disks: [],
              seeds: r.primaryDisks,
              vmSpecJson: "",
            });
            await unary(client, client.completeFailover, { vmId: vm });
            const started = await unary(client, client.startReverseReplication, { vmId: vm, replicaAddress: readAddress(o.primaryDir) }, 60_000);
            reverse = `\nreverse replication to the old primary started (agent pid ${started.agentPid})`;
            old.close();
          }
          emit(
            o.json,
            r,
            () =>
              formatTable(
                ["vm", "point", "generation", "running after ms", "serial log"],
                [[vm, r.recoveryPointId, Number(r.generation), r.vm ? Number(r.vm.timeToRunningMs) : "-", r.vm?.serialLog ?? "(not started)"]],
              ) + reverse,
          );
        } else {
          const kind = o.planned ? FailoverKind.FAILOVER_KIND_PLANNED : FailoverKind.FAILOVER_KIND_UNPLANNED;
          const r = await unary(client, client.failover, { vmId: vm, kind, recoveryPointId: o.point ?? "", startVm: o.start }, 120_000);
          emit(
            o.json,
            r,
            () =>
              formatTable(
                ["vm", "point", "generation", "running after ms", "serial log"],
                [[vm, r.recoveryPointId, Number(r.generation), r.vm ? Number(r.vm.timeToRunningMs) : "-", r.vm?.serialLog ?? "(not started)"]],
              ) + `\nnext: 'qreplica failover ${vm} complete' to commit, or 'qreplica failover ${vm} cancel' to go back`,
          );
        }
        client.close();
      } catch (err) {
        fail(err, o.json);
      }
    },
  );

  const test = program.command("test-failover").description("manage test failovers");
  withTarget(test.command("stop <vm>").description("stop a VM's test failovers (all, or one with --test-id) and discard their overlays"), TARGET_HELP)
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

/**
 * Runs a long call (a planned failover: the primary stops its VM and ships a final cycle, up to
 * minutes) while showing the VM's cycles as the site receives them; the watch ends with the call.
 */
async function withCycleProgress<T>(client: ControlServiceClient, vm: string, mode: ProgressMode, first: string, call: () => Promise<T>): Promise<T> {
  const reporter = progressReporter(mode);
  reporter.phase(vm, first);
  let settled = false;
  const watching = watchCycles({ client, vm, reporter, until: () => settled }).catch(() => undefined);
  try {
    return await call();
  } finally {
    settled = true;
    await watching;
    reporter.stop();
  }
}

/**
 * The seeding point, not the newest: with a short interval the next cycle may commit before the
 * wait sees the first one.
 */
async function seededPoint(
  replica: ControlServiceClient,
  vm: string,
  generation: bigint,
  progress: ProgressMode,
): Promise<{ recoveryPointId: string; newestRecoveryPointId: string }> {
  const rel = await waitUntilReplicating(replica, vm, progress);
  const newest = rel?.lastRecoveryPoint?.recoveryPointId ?? "";
  const points = await unary(replica, replica.listRecoveryPoints, { vmId: vm });
  const first = points.recoveryPoints.find((p) => p.generation === generation);
  return { recoveryPointId: first?.recoveryPointId ?? newest, newestRecoveryPointId: newest };
}

export function registerReverse(program: Command): void {
  withProgress(program.command("reverse <vm>"))
    .option("--wait", "wait until the old primary's site has the first point (the seeding), showing its progress on stderr", false)
    .description("after a failover, replicate the VM back to the old primary's site, sending only the chunks that differ from its old disks")
    .requiredOption("--dir <dir>", "the site the VM failed over to (now its primary)")
    .requiredOption("--to-dir <dir>", "the old primary's site directory (the new replica)")
    .option("--seed <disk=image...>", "the old primary's disk image per disk (compared chunk by chunk); without one a disk is copied in full", [])
    .option("--json", "JSON output", false)
    .action(async (vm: string, o: { dir: string; toDir: string; seed: string[]; json: boolean; wait: boolean; progress: ProgressMode }) => {
      try {
        const primary = controlClient({ dir: o.dir });
        const status = await unary(primary, primary.getStatus, { vmId: vm });
        const rel = status.relationships[0];
        if (!rel) throw new Error(`site ${status.siteId} has no relationship for VM ${vm}`);
        // Said before the old primary's site is prepared (the site refuses it too): a refused reverse changes nothing.
        await refuseReverseWhileExtended(primary, vm, o.dir, status);
        const replica = controlClient({ dir: o.toDir });
        const points = await unary(primary, primary.listRecoveryPoints, { vmId: vm });
        const disks = points.recoveryPoints.at(-1)?.disks.map((d) => ({ diskId: d.diskId, virtualSizeBytes: d.virtualSizeBytes })) ?? [];
        const seeds = o.seed.map((s) => {
          const eq = s.indexOf("=");
          if (eq < 1) throw new InvalidCliArgumentError(`--seed ${s}: expected DISK=IMAGE, e.g. vda=/var/lib/vms/web1-vda.qcow2`);
          return { diskId: s.slice(0, eq), imagePath: s.slice(eq + 1) };
        });
        // Site certificates are issued with the site id as their identity ('qreplica site init').
        await unary(replica, replica.prepareReverseReplication, {
          vmId: vm,
          generation: rel.generation,
          primarySiteId: status.siteId,
          primaryIdentity: status.siteId,
          disks,
          seeds,
          vmSpecJson: "",
        });
        const started = await unary(primary, primary.startReverseReplication, { vmId: vm, replicaAddress: readAddress(o.toDir) }, 60_000);
        const agentLog = reverseAgentLogFile(runDir(resolve(o.dir)), vm);
        // The seeding is the reverse relationship's first cycle, received by the old primary's site.
        const seeded = o.wait ? await seededPoint(replica, vm, started.generation, o.progress) : undefined;
        emit(
          o.json,
          { ...started, agentLog, ...(seeded ?? {}) },
          () =>
            `VM ${vm}: reverse replication started from ${status.siteId} (generation ${started.generation}, agent pid ${started.agentPid}, log ${agentLog}); ${seeds.length ? "only chunks differing from the seeds are sent" : "full copy (no seed given)"}`,
        );
        primary.close();
        replica.close();
      } catch (err) {
        fail(err, o.json);
      }
    });
}

/**
 * A VM has one replica at a time: with an extended replica configured on the site the VM failed
 * over to, reverse replication toward the old primary is refused before anything changes.
 */
async function refuseReverseWhileExtended(client: ControlServiceClient, vm: string, dir: string, known?: GetStatusResponse): Promise<void> {
  const status = known ?? (await unary(client, client.getStatus, { vmId: vm }));
  const ext = status.relationships[0]?.extendedReplication;
  if (!ext || ext.state === "stopped") return;
  throw new Error(
    `VM ${vm} replicates on to its extended replica, site ${ext.targetSiteId} (${ext.state}), and a VM has one replica at a time: ` +
      `stop that first ('qreplica extend ${vm} --dir ${dir} --stop'), then reverse replication toward the old primary`,
  );
}
