import * as grpc from "@grpc/grpc-js";
import { RejectReason, type Hello } from "../../gen/qreplica/v1/replication.js";
import { InvalidIdError, isValidId } from "../../model/index.js";
import type { CertificateIdentity, Role } from "../../transport/index.js";
import type { SiteContext } from "../siteContext.js";
import { forwardingClaimRefusal } from "./forwardingClaims.js";

export const PROTOCOL_VERSION = 1;

/** Why a Hello is refused before the relationship is asked: the reason, the words, the stream's status. */
export interface HelloRefusal {
  reason: RejectReason;
  message: string;
  status: grpc.status;
}

/**
 * The checks a Hello passes before its relationship is looked at: the protocol, well-formed ids
 * (they name ledger streams and replica directories), a certificate not revoked, and a primary
 * authorized on this site, and claims only a forwarding site may make (forwardingClaims.ts).
 * Revoked and unauthorized peers are recorded in the audit stream.
 */
export async function helloRefusal(
  ctx: Pick<SiteContext, "siteId" | "revocations" | "refusals" | "authorizations" | "relationships">,
  hello: Hello,
  peer: { identity: string; role: Role | "none"; certificate: CertificateIdentity | undefined; host: string | undefined },
): Promise<HelloRefusal | undefined> {
  if (hello.protocolVersion !== PROTOCOL_VERSION) {
    return {
      reason: RejectReason.REJECT_REASON_UNSUPPORTED_PROTOCOL_VERSION,
      message: `protocol version ${hello.protocolVersion} is not supported (this site speaks ${PROTOCOL_VERSION}); upgrade the agent or the site`,
      status: grpc.status.FAILED_PRECONDITION,
    };
  }
  const badId = [hello.vmId, ...hello.disks.map((d) => d.diskId)].find((id) => !isValidId(id));
  if (badId !== undefined) {
    const kind = badId === hello.vmId ? "VM id" : "disk id";
    return { reason: RejectReason.REJECT_REASON_UNKNOWN_VM, message: new InvalidIdError(kind, badId, "Hello").message, status: grpc.status.INVALID_ARGUMENT };
  }
  const audited = { identity: peer.identity, role: peer.role, rpc: "Replicate", needed: "authorization", vmId: hello.vmId, vmIdMalformed: false, peer: peer.host } as const;
  const revoked = peer.certificate && ctx.revocations?.refusal(peer.certificate);
  if (revoked) {
    await ctx.refusals.record({ ...audited, reason: "CERTIFICATE_REVOKED", message: revoked });
    return { reason: RejectReason.REJECT_REASON_UNAUTHORIZED, message: revoked, status: grpc.status.UNAUTHENTICATED };
  }
  if (!(await ctx.authorizations.find(peer.identity))) {
    const message = `primary '${peer.identity}' is not authorized to replicate to site ${ctx.siteId}; on the replica site run 'qreplica authorize --dir SITE_DIR --primary ${peer.identity}'`;
    await ctx.refusals.record({ ...audited, reason: "PRIMARY_NOT_AUTHORIZED", message });
    return { reason: RejectReason.REJECT_REASON_UNAUTHORIZED, message, status: grpc.status.PERMISSION_DENIED };
  }
  return forwardingClaimRefusal(ctx, hello, { identity: peer.identity, role: peer.role, host: peer.host });
}
