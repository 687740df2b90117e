import type { Command } from "commander";
import { RelationshipState, ReplicationHealth } from "../../gen/qreplica/v1/control.js";
import { Consistency, CycleKind } from "../../gen/qreplica/v1/common.js";
import { controlClient, unary, type SiteTargetOptions } from "../siteClient.js";
import { formatBytes, formatTable } from "../table.js";
import { emit, fail } from "../output.js";

type Target = SiteTargetOptions & { json: boolean };

const enumName = (e: Record<number, string>, v: number, prefix: string) => (e[v] ?? "UNKNOWN").replace(prefix, "").toLowerCase().replaceAll("_", "-");

function withTarget(cmd: Command): Command {
  return cmd
    .option("--dir <dir>", "site directory on this host (address and certificate)")
    .option("--site <host:port>", "site address")
    .option("--ca <file>", "CA certificate")
    .option("--cert <file>", "client certificate")
    .option("--key <file>", "client key")
    .option("--json", "JSON output", false);
}

export function registerStatus(program: Command): void {
  withTarget(program.command("status [vm]").description("replication state, health and lag of the VMs replicated to a site")).action(async (vm: string | undefined, o: Target) => {
    try {
      const client = controlClient(o);
      const res = await unary(client, client.getStatus, { vmId: vm });
      emit(o.json, res, () =>
        res.relationships.length === 0
          ? `site ${res.siteId}: no VM is replicated here yet`
          : formatTable(
              ["vm", "state", "health", "gen", "primary", "last point", "cut-off", "lag s", "test"],
              res.relationships.map((r) => [
                r.vmId,
                enumName(RelationshipState, r.state, "RELATIONSHIP_STATE_"),
                enumName(ReplicationHealth, r.health, "REPLICATION_HEALTH_") + (r.healthMessage ? ` (${r.healthMessage})` : ""),
                Number(r.generation),
                r.primarySiteId,
                r.lastRecoveryPoint?.recoveryPointId ?? "-",
                r.lastRecoveryPoint?.cutoffTime?.toISOString() ?? "-",
                r.lag ? Number(r.lag.seconds) : "-",
                r.testFailoverActive ? "yes" : "no",
              ]),
            ),
      );
      client.close();
    } catch (err) {
      fail(err, o.json);
    }
  });

  withTarget(program.command("points <vm>").description("the recovery points of a VM, oldest first")).action(async (vm: string, o: Target) => {
    try {
      const client = controlClient(o);
      const res = await unary(client, client.listRecoveryPoints, { vmId: vm });
      emit(o.json, res.recoveryPoints, () =>
        formatTable(
          ["point", "seq", "kind", "cut-off", "consistency", "changed", "sent", "disks"],
          res.recoveryPoints.map((p) => [
            p.recoveryPointId,
            Number(p.sequence),
            enumName(CycleKind, p.kind, "CYCLE_KIND_"),
            p.cutoffTime?.toISOString() ?? "-",
            enumName(Consistency, p.consistency, "CONSISTENCY_"),
            formatBytes(Number(p.changedBytes)),
            formatBytes(Number(p.transferredBytes)),
            p.disks.map((d) => `${d.diskId}:${formatBytes(Number(d.virtualSizeBytes))}`).join(" "),
          ]),
        ),
      );
      client.close();
    } catch (err) {
      fail(err, o.json);
    }
  });

  withTarget(program.command("events [vm]").description("the ledger's audit trail of a VM (or of the whole site)"))
    .option("--from <n>", "first stream version (or global position without a VM)", (v) => BigInt(v), 0n)
    .option("--limit <n>", "at most N events", (v) => Number(v), 200)
    .action(async (vm: string | undefined, o: Target & { from: bigint; limit: number }) => {
      try {
        const client = controlClient(o);
        const res = await unary(client, client.listEvents, { vmId: vm, fromPosition: o.from, limit: o.limit });
        emit(o.json, res.events.map((e) => ({ ...e, data: JSON.parse(e.dataJson) as unknown, dataJson: undefined })), () =>
          formatTable(
            ["#", "time", "stream", "event", "actor", "data"],
            res.events.map((e) => [
              vm ? Number(e.streamVersion) : Number(e.globalPosition),
              e.recordedAt?.toISOString() ?? "",
              e.stream,
              e.type,
              // Who caused it: the caller of a control command; "-" for the site's own work (cycles, merges).
              e.actor ? `${e.actor} (${e.actorRole})` : "-",
              e.dataJson.length > 100 ? e.dataJson.slice(0, 97) + "..." : e.dataJson,
            ]),
          ),
        );
        client.close();
      } catch (err) {
        fail(err, o.json);
      }
    });
}
