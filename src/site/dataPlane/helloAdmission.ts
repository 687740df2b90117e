import * as grpc from "@grpc/grpc-js";
import { ChecksumAlgorithm, CompressionCodec } from "../../gen/qreplica/v1/common.js";
import { RejectReason, ResumeHint, ResyncMode, type Hello, type HelloAck } from "../../gen/qreplica/v1/replication.js";
import { InvalidIdError, isValidId } from "../../model/index.js";
import type { ChunkDigestName } from "../../common/chunkDigest.js";
import { digestToWire, KNOWN_CHECKSUMS, type CertificateIdentity, type Role } from "../../transport/index.js";
import type { HelloAccepted, HelloInput, ResumeKind } from "../relationships/relationships.js";
import { resyncModeAt } from "../resyncWindows.js";
import type { SiteContext } from "../siteContext.js";
import { forwardingClaimRefusal } from "./forwardingClaims.js";
import { MAX_CHUNK_BYTES } from "./openCycle.js";
import { parseVmSpec } from "./resync.js";

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

export const RESUME_HINT: Record<ResumeKind, ResumeHint> = {
  initial: ResumeHint.RESUME_HINT_INITIAL_REPLICATION,
  incremental: ResumeHint.RESUME_HINT_INCREMENTAL,
  resync: ResumeHint.RESUME_HINT_RESYNC,
  wait: ResumeHint.RESUME_HINT_WAIT_FOR_OPERATOR,
};

/** What the relationship decides an admitted Hello on (see Relationships.acceptHello). */
export async function relationshipHello(ctx: Pick<SiteContext, "policies" | "relationships">, hello: Hello, identity: string): Promise<HelloInput> {
  return {
    vmId: hello.vmId,
    primarySiteId: hello.sourceSiteId,
    primaryIdentity: identity,
    presentedGeneration: Number(hello.generation),
    vmSpec: parseVmSpec(hello.vmSpecJson),
    disks: hello.disks.map((d) => ({ diskId: d.diskId, sizeBytes: Number(d.virtualSizeBytes) })),
    trackingLost: hello.trackingLost.map((t) => ({ diskId: t.diskId, code: t.code || "TRACKING_LOST", reason: t.reason })),
    resyncMode: await resyncModeOf(ctx, hello),
    ...(hello.upstreamFailover ? { upstreamFailover: hello.upstreamFailover.slice(0, 500) } : {}),
    ...(hello.forwardingSite && hello.forwardedPointId !== undefined ? { forwardedPointId: hello.forwardedPointId } : {}),
  };
}

/**
 * A VM bound to a policy resyncs as its policy says (outside its resync window it waits, and
 * ResyncWindows starts it when the window opens; a resync already under way goes on);
 * otherwise as its agent config says (Hello).
 */
async function resyncModeOf(ctx: Pick<SiteContext, "policies" | "relationships">, hello: Hello): Promise<"automatic" | "manual"> {
  if (ctx.policies.effectivePolicyVersion(hello.vmId).version === 0) return hello.resyncMode === ResyncMode.RESYNC_MODE_MANUAL ? "manual" : "automatic";
  const policy = ctx.policies.effectivePolicy(hello.vmId);
  if (policy.resync.mode === "automatic" && (await ctx.relationships.load(hello.vmId)).state === "resynchronising") return "automatic";
  return resyncModeAt(policy, new Date());
}

/** The checksums both sides know; a sender that offers nothing is assumed to send SHA-256. */
export function acceptedChecksumsOf(hello: Hello): ChecksumAlgorithm[] {
  const offered = hello.supportedChecksumAlgorithms.length ? hello.supportedChecksumAlgorithms : [ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256];
  return KNOWN_CHECKSUMS.filter((a) => offered.includes(a));
}

/** The HelloAck for an accepted Hello: where the primary resumes, and what this site takes. */
export function helloAckFor(
  ctx: Pick<SiteContext, "siteId" | "policies">,
  vmId: string,
  accepted: HelloAccepted,
  acceptedChecksums: ChecksumAlgorithm[],
  resyncDigest: ChunkDigestName,
): HelloAck {
  return {
    generation: BigInt(accepted.generation),
    protocolVersion: PROTOCOL_VERSION,
    replicaSiteId: ctx.siteId,
    lastCommittedCycleSequence: BigInt(accepted.lastCycleSeq),
    resumeHint: RESUME_HINT[accepted.resume],
    maxChunkBytes: MAX_CHUNK_BYTES,
    acceptedCodecs: [CompressionCodec.COMPRESSION_CODEC_ZSTD, CompressionCodec.COMPRESSION_CODEC_NONE],
    acceptedChecksumAlgorithms: acceptedChecksums,
    resyncReason: accepted.resyncReason ?? "",
    policy: ctx.policies.wireFor(vmId),
    resyncDigest: digestToWire(resyncDigest),
  };
}
