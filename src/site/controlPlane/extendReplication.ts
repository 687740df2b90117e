import * as grpc from "@grpc/grpc-js";
import type { ExtendReplicationRequest, ExtendReplicationResponse } from "../../gen/qreplica/v1/control.js";
import type { SiteContext } from "../siteContext.js";
import type { Caller } from "./caller.js";

/**
 * ExtendReplication (operator): this replica site forwards the VM's points to a third site, or
 * stops. The third site must authorize this site's identity as the VM's primary (an admin there:
 * 'qreplica authorize --primary SITE_ID', which 'qreplica extend --to-dir' does).
 */
export async function extendReplication(ctx: SiteContext, req: ExtendReplicationRequest, caller: Caller): Promise<ExtendReplicationResponse> {
  const extensions = ctx.extensions;
  if (!extensions) throw Object.assign(new Error("extended replication is not running on this site yet"), { grpcCode: grpc.status.UNAVAILABLE });
  if (!req.vmId) throw Object.assign(new Error("a VM id is required"), { grpcCode: grpc.status.INVALID_ARGUMENT });
  const rel = await ctx.relationships.load(req.vmId);
  if (rel.state === "not-enabled") {
    throw Object.assign(new Error(`VM '${req.vmId}' is not replicated to site ${ctx.siteId}: only a replica site's points can be forwarded to a third site`), {
      grpcCode: grpc.status.NOT_FOUND,
    });
  }
  if (!req.stop && rel.primarySiteId === ctx.siteId) {
    throw Object.assign(
      new Error(
        `VM ${req.vmId} replicates from this site back to site ${rel.replicaSiteId ?? "?"} (reverse replication), and a VM has one replica at a time: ` +
          "extended replication goes on from a replica site, or from a failed-over VM that has not been reversed",
      ),
      { grpcCode: grpc.status.FAILED_PRECONDITION },
    );
  }
  if (req.stop) await extensions.stop(req.vmId, caller);
  else {
    if (req.targetSiteId === ctx.siteId) {
      throw Object.assign(new Error(`site ${ctx.siteId} cannot forward to itself: name the third site`), { grpcCode: grpc.status.INVALID_ARGUMENT });
    }
    if (req.targetSiteId === rel.primarySiteId) {
      throw Object.assign(new Error(`site ${req.targetSiteId} is the VM's primary: forwarding goes to a third site (reverse replication goes back to the primary)`), {
        grpcCode: grpc.status.INVALID_ARGUMENT,
      });
    }
    await extensions.configure(req.vmId, { targetAddress: req.targetAddress, targetSiteId: req.targetSiteId, intervalSeconds: req.intervalSeconds }, caller);
  }
  return { extension: extensions.status(req.vmId, rel) };
}
