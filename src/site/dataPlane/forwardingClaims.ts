import * as grpc from "@grpc/grpc-js";
import { RejectReason, type Hello } from "../../gen/qreplica/v1/replication.js";
import type { RelationshipState } from "../../ledger/index.js";
import type { Role } from "../../transport/index.js";
import type { SiteContext } from "../siteContext.js";
import type { HelloRefusal } from "./helloAdmission.js";

/**
 * Two Hello claims only the site that forwards a VM here may make (extended replication A -> B ->
 * C, this is C, B is that site):
 * - `upstream_failover`: the VM failed over at B; it moves C's generation, fences every older one
 *   and forces a resync by comparison;
 * - `forwarding_site`: the peer is a site, not the VM's agent; it makes C's planned failover ask
 *   the peer to relay it to the primary, and a `forwarded_point_id` C lacks forces a resync.
 *
 * The forwarding site is the identity that is at once the Hello's `source_site_id` (a site's
 * certificate carries its site id as its CN: `qreplica site init --name`; an agent's carries the
 * name `pki issue --name` gave it), and, once the VM has a relationship here, the relationship's
 * primary identity and primary site (B, as its first forward or a failover upstream recorded
 * them). Every other authorized primary (an agent of this VM or of another, another site) is
 * refused by name, and recorded in the audit stream as an unauthorized Hello is.
 *
 * Refused rather than ignored: only this product's forwarder sets these fields, so a peer that
 * sends them without being the forwarding site is misconfigured or forged. Ignoring the claim
 * would let the Hello through with other semantics than its sender meant (an agent that thinks it
 * declared a failover would replicate on as if it had); refusing it says so at once, on both
 * sides, and leaves the refusal in the ledger for the operator, as a DR product does with a peer
 * whose certificate does not match the role it claims.
 */
export async function forwardingClaimRefusal(
  ctx: Pick<SiteContext, "siteId" | "refusals"> & { relationships: { load(vmId: string): Promise<RelationshipState> } },
  hello: Hello,
  peer: { identity: string; role: Role | "none"; host: string | undefined },
): Promise<HelloRefusal | undefined> {
  const claims = [
    ...(hello.upstreamFailover ? ["a failover upstream (Hello.upstream_failover)"] : []),
    ...(hello.forwardingSite ? ["to forward the VM's points (Hello.forwarding_site)"] : []),
  ];
  if (claims.length === 0) return undefined;
  const rel = await ctx.relationships.load(hello.vmId);
  const enabled = rel.state !== "not-enabled";
  const forwardingSite = peer.identity === hello.sourceSiteId && (!enabled || (rel.primaryIdentity === peer.identity && rel.primarySiteId === peer.identity));
  if (forwardingSite) return undefined;
  const expected = enabled ? `only '${rel.primaryIdentity}', the site that forwards VM ${hello.vmId} to site ${ctx.siteId}, may` : "only a site presenting its own certificate may";
  const message =
    `'${peer.identity}' (source site '${hello.sourceSiteId}') declares ${claims.join(" and ")} for VM ${hello.vmId}, but ${expected}: refused. ` +
    "An agent never sets these fields; if this peer is a site forwarding the VM here, it must dial with its site certificate (CN = its site id)";
  await ctx.refusals.record({
    identity: peer.identity,
    role: peer.role,
    rpc: "Replicate",
    needed: "authorization",
    reason: "FORWARDING_CLAIM_REFUSED",
    message,
    vmId: hello.vmId,
    vmIdMalformed: false,
    peer: peer.host,
  });
  return { reason: RejectReason.REJECT_REASON_UNAUTHORIZED, message, status: grpc.status.PERMISSION_DENIED };
}
