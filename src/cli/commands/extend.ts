import type { Command } from "commander";
import type { ExtendedReplicationStatus } from "../../gen/qreplica/v1/control.js";
import { loadSiteConfig } from "../../site/siteConfig.js";
import { InvalidCliArgumentError } from "../exitCodes.js";
import { controlClient, readAddress, unary } from "../siteClient.js";
import { emit, fail } from "../output.js";
import { withTarget, type Target } from "../target.js";

interface ExtendOptions extends Target {
  toDir?: string;
  to?: string;
  toSite?: string;
  interval: string;
  stop: boolean;
}

export function extensionText(vm: string, e: ExtendedReplicationStatus | undefined): string {
  if (!e) return `VM ${vm}: not forwarded to a third site`;
  const last = e.lastForwardedPointId ? `last forwarded ${e.lastForwardedPointId} -> ${e.targetPointId}` : "nothing forwarded yet";
  const error = e.lastError ? `; last error: ${e.lastError}` : "";
  if (e.state === "following-failover") {
    return `VM ${vm}: failed over at this site; its failover VM replicates on to site ${e.targetSiteId} (${e.targetAddress}) with agent pid ${e.agentPid}, generation ${e.targetGeneration} there; ${e.pointsForwarded} points forwarded before${error}`;
  }
  return `VM ${vm}: ${e.state === "forwarding" ? "forwarded" : "no longer forwarded"} to site ${e.targetSiteId} (${e.targetAddress}); ${last}; ${e.pointsForwarded} forwarded, ${e.pointsPending} pending${error}`;
}

/**
 * `qreplica extend VM --dir B --to-dir C`: extended replication. The replica site B forwards the
 * VM's points to C. With --to-dir (C's directory on this host) C's admin certificate authorizes
 * B's identity there first; with --to/--to-site an admin of C does that ('qreplica authorize').
 */
export function registerExtend(program: Command): void {
  withTarget(
    program
      .command("extend <vm>")
      .description(
        "extended replication (A -> B -> C): the replica site forwards the VM's recovery points to a third site; needs role operator (and admin on the third site with --to-dir)",
      ),
    { dir: "the replica site's directory (B, which forwards)", site: "the replica site's address (B)" },
  )
    .option("--to-dir <dir>", "the third site's directory on this host (C): its address and id, and B is authorized there with its admin certificate")
    .option("--to <host:port>", "the third site's address (C), when it is on another host")
    .option("--to-site <id>", "with --to: the third site's id (its certificate must name it)")
    .option("--interval <seconds>", "forward at most once per this many seconds (0: each point as it commits)", "0")
    .option("--stop", "stop forwarding this VM", false)
    .action(async (vm: string, o: ExtendOptions) => {
      try {
        const interval = Number(o.interval);
        if (!Number.isInteger(interval) || interval < 0) throw new InvalidCliArgumentError(`--interval ${o.interval}: give whole seconds, 0 or more`);
        const client = controlClient(o);
        try {
          if (o.stop) {
            const r = await unary(client, client.extendReplication, { vmId: vm, targetAddress: "", targetSiteId: "", intervalSeconds: 0, stop: true });
            emit(o.json, r, () => extensionText(vm, r.extension));
            return;
          }
          let address = o.to;
          let targetSiteId = o.toSite;
          if (o.toDir) {
            address = readAddress(o.toDir);
            targetSiteId = loadSiteConfig(o.toDir).siteId;
            // Site certificates carry the site id as their identity ('qreplica site init').
            const { siteId } = await unary(client, client.whoAmI, {});
            const third = controlClient({ dir: o.toDir });
            try {
              await unary(third, third.addAuthorization, { primaryIdentity: siteId });
            } finally {
              third.close();
            }
          }
          if (!address || !targetSiteId) throw new InvalidCliArgumentError("name the third site: --to-dir DIR, or --to HOST:PORT with --to-site ID");
          const r = await unary(client, client.extendReplication, { vmId: vm, targetAddress: address, targetSiteId, intervalSeconds: interval, stop: false });
          emit(o.json, r, () => extensionText(vm, r.extension));
        } finally {
          client.close();
        }
      } catch (err) {
        fail(err, o.json);
      }
    });
}
