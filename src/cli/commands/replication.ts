import type { Command } from "commander";
import type { RelationshipCommandResponse } from "../../gen/qreplica/v1/control.js";
import { controlClient, unary } from "../siteClient.js";
import { emit, fail } from "../output.js";
import { withTarget, type Target } from "../target.js";
import type { ProgressMode } from "../progress.js";
import { waitUntilReplicating, withProgress } from "./wait.js";

function told(r: RelationshipCommandResponse): string {
  return r.agentNotified ? "the primary's agent was told" : "the primary's agent is not connected; it learns it at its next connection";
}

/** pause / resume / resync of one VM's replication, on its replica site. */
const TARGET_HELP = { dir: "the replica site's directory on this host", site: "the replica site's address" };

export function registerReplication(program: Command): void {
  withTarget(program.command("pause <vm>").description("pause a VM's replication: no cycle until resumed; the primary keeps every change"), TARGET_HELP)
    .option("--reason <text>", "why (recorded in the ledger and shown by status)")
    .action(async (vm: string, o: Target & { reason?: string }) => {
      try {
        const client = controlClient(o);
        const r = await unary(client, client.pauseReplication, { vmId: vm, reason: o.reason ?? "" });
        emit(o.json, r, () => `VM ${vm}: replication paused (state ${r.state}); ${told(r)}`);
        client.close();
      } catch (err) {
        fail(err, o.json);
      }
    });

  withTarget(program.command("resume <vm>").description("resume a paused VM's replication; the next cycle carries every change made meanwhile"), TARGET_HELP).action(
    async (vm: string, o: Target) => {
      try {
        const client = controlClient(o);
        const r = await unary(client, client.resumeReplication, { vmId: vm });
        emit(o.json, r, () => `VM ${vm}: replication resumed (state ${r.state}); ${told(r)}`);
        client.close();
      } catch (err) {
        fail(err, o.json);
      }
    },
  );

  withProgress(
    withTarget(
      program
        .command("resync <vm>")
        .description("resynchronise a VM by comparison with its newest recovery point (after a crash with 'resync: manual', or on demand); older points are kept"),
      TARGET_HELP,
    ).option("--wait", "wait until the resync has committed its point, showing its progress on stderr (as 'qreplica wait')", false),
  ).action(async (vm: string, o: Target & { wait: boolean; progress: ProgressMode }) => {
    try {
      const client = controlClient(o);
      const r = await unary(client, client.resync, { vmId: vm });
      if (o.wait) {
        const rel = await waitUntilReplicating(client, vm, o.progress);
        const point = rel?.lastRecoveryPoint?.recoveryPointId ?? "";
        emit(o.json, { ...r, state: "replicating", recoveryPointId: point }, () => `VM ${vm}: resynchronised; newest point ${point}`);
      } else emit(o.json, r, () => `VM ${vm}: resync requested (state ${r.state}); ${told(r)}`);
      client.close();
    } catch (err) {
      fail(err, o.json);
    }
  });
}
