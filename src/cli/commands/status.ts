import { InvalidArgumentError, type Command } from "commander";
import { RelationshipState, ReplicationHealth } from "../../gen/qreplica/v1/control.js";
import { Consistency, CycleKind } from "../../gen/qreplica/v1/common.js";
import * as grpc from "@grpc/grpc-js";
import { AUDIT_STREAM } from "../../site/controlPlane/refusalAudit.js";
import { ControlCallError, controlClient, unary } from "../siteClient.js";
import { formatBytes, formatTable } from "../table.js";
import { emit, fail } from "../output.js";
import { withTarget, type Target } from "../target.js";


const enumName = (e: Record<number, string>, v: number, prefix: string) => (e[v] ?? "UNKNOWN").replace(prefix, "").toLowerCase().replaceAll("_", "-");


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
    .option("--from <n>", "first stream version with a VM, else first global position (as printed in the # column)", (v) => parseCount(v), 0)
    .option("--limit <n>", "at most N events (the site answers at most 1000 per request; more are fetched page by page)", (v) => parseCount(v, 1), 200)
    .option("--all", "every event from --from to the end, fetched page by page (--limit is ignored)", false)
    .option("--audit", "only refused calls (the ledger's `audit` stream); needs a certificate with role admin", false)
    .addHelpText(
      "after",
      "\nWith --json the output is one object: { events: [...], nextPosition, more }. `more` is true when the ledger\n" +
        "holds events after the last one printed; pass `--from <nextPosition>` to continue. Without --json a line\n" +
        "after the table says so.\n\n" +
        "Refused calls (control calls, and Hellos of unauthorized primaries) are recorded in the stream `audit`\n" +
        "(ControlCallRefused: identity, role, RPC, VM, role needed, reason, and a count: identical refusals within a\n" +
        "minute are one event). Only admins see them.",
    )
    .action(async (vm: string | undefined, o: Target & { from: number; limit: number; all: boolean; audit: boolean }) => {
      try {
        if (o.audit && vm) throw new Error("--audit lists the site's refused control calls, of every VM: give no VM");
        const client = controlClient(o);
        if (o.audit) await requireAdmin(client);
        const page = await readEvents(client, vm, BigInt(o.from), o.all ? Infinity : o.limit, o.audit ? AUDIT_STREAM : undefined);
        emit(o.json, { events: page.events.map((e) => ({ ...e, data: JSON.parse(e.dataJson) as unknown, dataJson: undefined })), nextPosition: page.nextPosition, more: page.more }, () => {
          const table = formatTable(
            ["#", "time", "stream", "event", "actor", "data"],
            page.events.map((e) => [
              vm ? Number(e.streamVersion) : Number(e.globalPosition),
              e.recordedAt?.toISOString() ?? "",
              e.stream,
              e.type,
              // Who caused it: the caller of a control command (or of a refused one); "-" for the site's own work (cycles, merges).
              e.actor ? `${e.actor} (${e.actorRole})` : "-",
              e.dataJson.length > 100 ? e.dataJson.slice(0, 97) + "..." : e.dataJson,
            ]),
          );
          return page.more ? `${table}\n(more events follow: --from ${page.nextPosition}, or --all)` : table;
        });
        client.close();
      } catch (err) {
        fail(err, o.json);
      }
    });
}

type EventsClient = ReturnType<typeof controlClient>;
type WireEvent = Awaited<ReturnType<typeof listEventsPage>>["events"][number];

function listEventsPage(client: EventsClient, vmId: string | undefined, fromPosition: bigint, limit: number, streamPrefix?: string) {
  return unary(client, client.listEvents, { vmId: vmId ?? "", fromPosition, limit, streamPrefix });
}

/** The site shows the audit stream to admins only: say so instead of printing an empty list. */
async function requireAdmin(client: EventsClient): Promise<void> {
  const me = await unary(client, client.whoAmI, {});
  if (me.role !== "admin") {
    throw new ControlCallError(
      grpc.status.PERMISSION_DENIED,
      `'${me.identity}' (role ${me.role}) may not read the audit stream of site ${me.siteId}: refused control calls are shown to admins only; use an admin certificate, or '--dir SITE_DIR' on the site's host`,
    );
  }
}

/**
 * Up to `limit` events from `from` (of the streams starting with `streamPrefix`, when given), page
 * by page (the site caps a page), and whether more exist. The site may leave events out of a page
 * (the audit stream, for non-admins), so a page with fewer events than asked is not the end: only
 * `endReached`, or no progress, is.
 */
async function readEvents(client: EventsClient, vmId: string | undefined, from: bigint, limit: number, streamPrefix?: string): Promise<{ events: WireEvent[]; nextPosition: bigint; more: boolean }> {
  const events: WireEvent[] = [];
  let next = from;
  for (;;) {
    const res = await listEventsPage(client, vmId, next, Math.min(1000, limit - events.length), streamPrefix);
    events.push(...res.events);
    const progressed = res.nextPosition !== next;
    next = res.nextPosition;
    if (res.endReached || !progressed) return { events, nextPosition: next, more: false };
    if (events.length >= limit) return { events, nextPosition: next, more: true };
  }
}

/** A non-negative integer option; commander prints the message and exits on a bad one. */
function parseCount(v: string, min = 0): number {
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`'${v}' is not a whole number >= ${min}`);
  return n;
}
