import { InvalidArgumentError, type Command } from "commander";
import { drillCell } from "./verify.js";
import { ReplicationHealth } from "../../gen/qreplica/v1/control.js";
import * as grpc from "@grpc/grpc-js";
import { AUDIT_STREAM } from "../../site/controlPlane/refusalAudit.js";
import { HEALTH_STREAM_PREFIX } from "../../site/health/monitor.js";
import { ControlCallError, controlClient, unary } from "../siteClient.js";
import { formatBytes, formatTable } from "../table.js";
import { emit, fail } from "../output.js";
import { withTarget, type Target } from "../target.js";
import { extensionText } from "./extend.js";
import { consistencyName, healthName, kindName, pointJson, stateName, statusJson } from "../jsonView.js";

type StatusResponse = Awaited<ReturnType<typeof getStatusOf>>;
const getStatusOf = (client: ReturnType<typeof controlClient>) => unary(client, client.getStatus, {});

/** One line per VM, gravest first: what an operator scans for at-risk VMs. */
function formatFleet(res: StatusResponse): string {
  if (res.relationships.length === 0) return `site ${res.siteId}: no VM is replicated here yet`;
  const rank = (h: number) => (h === ReplicationHealth.REPLICATION_HEALTH_CRITICAL ? 0 : h === ReplicationHealth.REPLICATION_HEALTH_WARNING ? 1 : 2);
  const rows = [...res.relationships].sort((a, b) => rank(a.health) - rank(b.health) || (a.vmId < b.vmId ? -1 : 1));
  // Extended replication (this site forwards to a third): one line per VM under the table.
  const forwarded = rows.filter((r) => r.extendedReplication).map((r) => extensionText(r.vmId, r.extendedReplication));
  const table = formatTable(
    ["vm", "health", "point age", "policy", "state", "gen", "last point", "test", "receiving", "reasons"],
    rows.map((r) => [
      r.vmId,
      healthName(r.health),
      r.lag ? formatAge(Number(r.lag.seconds)) : "-",
      r.policyName || "-",
      stateName(r.state),
      Number(r.generation),
      r.lastRecoveryPoint?.recoveryPointId ?? "-",
      r.testFailoverActive ? "yes" : "no",
      receiving(r),
      r.healthReasons.length > 0 ? r.healthReasons.map((x) => x.code).join(",") : r.healthMessage || "-",
    ]),
  );
  return forwarded.length ? `${table}\n${forwarded.join("\n")}` : table;
}

/** The cycle the site is receiving: "initial 37% of 16.0 MiB", what the initial replication waits for, or "-". */
function receiving(r: StatusResponse["relationships"][number]): string {
  const c = r.cycleInProgress;
  if (!c) return r.initialReplicationWait || "-";
  const total = Number(c.bytesTotal);
  const done = Number(c.bytesDone);
  return total > 0 ? `${kindName(c.kind)} ${Math.floor((100 * done) / total)}% of ${formatBytes(total)}` : `${kindName(c.kind)} ${formatBytes(done)}`;
}

function formatAge(s: number): string {
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** Runs `fn` now and every `everyMs` until SIGINT or SIGTERM (then resolves: the command ends normally). */
async function untilInterrupted(everyMs: number, fn: () => Promise<void>): Promise<void> {
  let stop: () => void = () => undefined;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  let done = false;
  const onSignal = () => {
    done = true;
    stop();
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    while (!done) {
      await fn();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([stopped, new Promise<void>((resolve) => (timer = setTimeout(resolve, everyMs)))]);
      clearTimeout(timer);
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

export function registerStatus(program: Command): void {
  withTarget(program.command("status [vm]").description("the fleet at a glance: one line per VM replicated to a site (health, newest point age, policy, state)"))
    .option("--watch [seconds]", "redraw every N seconds (default 5) until interrupted; with --json, one JSON document per refresh, one per line", (v) => parseCount(v, 1))
    .addHelpText("after", "\nWith --json each relationship carries healthReasons: every reason its health is not normal (code, level, message).")
    .action(async (vm: string | undefined, o: Target & { watch?: number | true }) => {
      try {
        const client = controlClient(o);
        const once = async () => {
          const res = await unary(client, client.getStatus, { vmId: vm });
          return { res, text: () => formatFleet(res) };
        };
        if (o.watch === undefined) {
          const { res, text } = await once();
          emit(o.json, statusJson(res), text);
        } else {
          const everyMs = (o.watch === true ? 5 : o.watch) * 1000;
          await untilInterrupted(everyMs, async () => {
            const { res, text } = await once();
            if (o.json) console.log(JSON.stringify(statusJson(res), (_k, v: unknown) => (typeof v === "bigint" ? Number(v) : v)));
            else process.stdout.write((process.stdout.isTTY ? "\x1b[2J\x1b[H" : "") + `${new Date().toISOString()}  site ${res.siteId}\n${text()}\n`);
          });
        }
        client.close();
      } catch (err) {
        fail(err, o.json);
      }
    });

  withTarget(
    program
      .command("points <vm> [action]")
      .description("the recovery points of a VM, oldest first; 'points VM clear-suspect' (or ack) clears suspect points (role operator)")
      .option("--point <id>", "with clear-suspect: only this point (every suspect point when omitted)"),
  ).action(async (first: string, second: string | undefined, o: Target & { point?: string }) => {
    // Both 'points clear-suspect VM' and 'points VM clear-suspect' read naturally.
    const isAction = (a: string) => a === "clear-suspect" || a === "ack";
    const [vm, action] = second !== undefined && isAction(first) ? [second, first] : [first, second];
    try {
      const client = controlClient(o);
      if (action !== undefined) {
        if (!isAction(action)) throw new Error(`unknown points action '${action}': use 'clear-suspect' (or 'ack')`);
        const r = await unary(client, client.clearSuspectPoints, { vmId: vm, recoveryPointId: o.point ?? "" });
        emit(o.json, r, () => `VM ${vm}: suspicion cleared on ${r.clearedRecoveryPointIds.join(", ")}`);
        client.close();
        return;
      }
      const res = await unary(client, client.listRecoveryPoints, { vmId: vm });
      const pct = (x: number) => `${Math.round(x * 100)}%`;
      const flags = (p: (typeof res.recoveryPoints)[number]) =>
        [
          p.suspectDisks.length > 0 ? `SUSPECT ${p.suspectDisks.map((d) => `${d.diskId} ${pct(d.share)}>${pct(d.baselineShare)}`).join(" ")}` : "",
          p.lastClean ? "last-clean" : "",
          p.lockedUntil && p.lockedUntil.getTime() > Date.now() ? `locked until ${p.lockedUntil.toISOString()}` : "",
        ]
          .filter(Boolean)
          .join(", ") || "-";
      emit(o.json, res.recoveryPoints.map(pointJson), () =>
        formatTable(
          ["point", "seq", "kind", "cut-off", "consistency", "changed", "sent", "disks", "drill", "flags"],
          res.recoveryPoints.map((p) => [
            p.recoveryPointId,
            Number(p.sequence),
            kindName(p.kind),
            p.cutoffTime?.toISOString() ?? "-",
            consistencyName(p.consistency),
            formatBytes(Number(p.changedBytes)),
            formatBytes(Number(p.transferredBytes)),
            p.disks.map((d) => `${d.diskId}:${formatBytes(Number(d.virtualSizeBytes))}`).join(" "),
            drillCell(p.verification),
            flags(p),
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
    .option("--health", "only health changes (HealthChanged, streams health-VM), of the VM given or of every VM", false)
    .option("--follow", "after the events asked for, keep printing new ones as the ledger records them, until interrupted (with --json: one event per line)", false)
    .option("--poll <seconds>", "with --follow: how often to ask the site for new events", (v) => parseCount(v, 1), 1)
    .addHelpText(
      "after",
      "\nWith --json the output is one object: { events: [...], nextPosition, more }. `more` is true when the ledger\n" +
        "holds events after the last one printed; pass `--from <nextPosition>` to continue. Without --json a line\n" +
        "after the table says so.\n\n" +
        "Refused calls (control calls, and Hellos of unauthorized primaries) are recorded in the stream `audit`\n" +
        "(ControlCallRefused: identity, role, RPC, VM, role needed, reason, and a count: identical refusals within a\n" +
        "minute are one event). Only admins see them.",
    )
    .action(async (vmArg: string | undefined, o: Target & { from: number; limit: number; all: boolean; audit: boolean; health: boolean; follow: boolean; poll: number }) => {
      try {
        if (o.audit && vmArg) throw new Error("--audit lists the site's refused control calls, of every VM: give no VM");
        if (o.audit && o.health) throw new Error("--audit and --health are two different streams: give one");
        // Health changes are in their own streams (health-VM), read by prefix with global positions.
        const prefix = o.audit ? AUDIT_STREAM : o.health ? `${HEALTH_STREAM_PREFIX}${vmArg ?? ""}` : undefined;
        const vm = o.health ? undefined : vmArg;
        // A prefix also matches longer ids (health-vm1 and health-vm10): keep the VM's own stream.
        const exact = o.health && vmArg ? `${HEALTH_STREAM_PREFIX}${vmArg}` : undefined;
        const client = controlClient(o);
        if (o.audit) await requireAdmin(client);
        if (o.follow) {
          await followEvents(client, vm, BigInt(o.from), prefix, o.json, o.poll * 1000, exact);
          client.close();
          return;
        }
        const read = await readEvents(client, vm, BigInt(o.from), o.all ? Infinity : o.limit, prefix);
        const page = exact ? { ...read, events: read.events.filter((e) => e.stream === exact) } : read;
        emit(
          o.json,
          { events: page.events.map((e) => ({ ...e, data: JSON.parse(e.dataJson) as unknown, dataJson: undefined })), nextPosition: page.nextPosition, more: page.more },
          () => {
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
          },
        );
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
async function readEvents(
  client: EventsClient,
  vmId: string | undefined,
  from: bigint,
  limit: number,
  streamPrefix?: string,
): Promise<{ events: WireEvent[]; nextPosition: bigint; more: boolean }> {
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

/**
 * `events --follow`: every event from `from`, then new ones as they are recorded, until
 * interrupted. ListEvents from the last position seen, every `pollMs`: the control plane has no
 * server stream, and a poll a second is nothing for the site (one indexed read).
 */
async function followEvents(
  client: EventsClient,
  vmId: string | undefined,
  from: bigint,
  streamPrefix: string | undefined,
  json: boolean,
  pollMs: number,
  exactStream?: string,
): Promise<void> {
  let next = from;
  const print = (e: WireEvent) => {
    if (json) {
      console.log(JSON.stringify({ ...e, data: JSON.parse(e.dataJson) as unknown, dataJson: undefined }, (_k, v: unknown) => (typeof v === "bigint" ? Number(v) : v)));
      return;
    }
    const actor = e.actor ? `${e.actor} (${e.actorRole})` : "-";
    const position = vmId ? Number(e.streamVersion) : Number(e.globalPosition);
    console.log(`${position}  ${e.recordedAt?.toISOString() ?? ""}  ${e.stream}  ${e.type}  ${actor}  ${e.dataJson.length > 160 ? e.dataJson.slice(0, 157) + "..." : e.dataJson}`);
  };
  await untilInterrupted(pollMs, async () => {
    for (;;) {
      const page = await readEvents(client, vmId, next, 1000, streamPrefix);
      for (const e of page.events) if (exactStream === undefined || e.stream === exactStream) print(e);
      next = page.nextPosition;
      if (!page.more) return;
    }
  });
}

/** A non-negative integer option; commander prints the message and exits on a bad one. */
function parseCount(v: string, min = 0): number {
  const n = Number(v);
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`'${v}' is not a whole number >= ${min}`);
  return n;
}
