import type { Logger } from "../../src/common/logger.js";
import { blake3Installed, type ChunkDigestName } from "../../src/common/chunkDigest.js";
import { ENABLE_UNACKNOWLEDGED } from "../../src/model/index.js";
import { ChecksumAlgorithm, CompressionCodec } from "../../src/gen/qreplica/v1/common.js";
import { ChunkDigest, ResyncMode, type Hello, type ResumeHint } from "../../src/gen/qreplica/v1/replication.js";
import type { AgentVmConfig } from "./agentConfig.js";
import type { CycleCapture } from "./replicationSource.js";

// What this agent tells the replica site in its Hello, and what it takes from the HelloAck.

export const PROTOCOL_VERSION = 1;

/** What the site's HelloAck told this agent. */
export interface HelloAnswer {
  generation: number;
  hint: ResumeHint;
  lastCycleSeq: number;
  resyncReason: string;
  /** The digest the replica compares resyncs with (HelloAck.resync_digest); undefined from older sites. */
  resyncDigest?: ChunkDigestName;
}

/** Change tracking the capture layer could not vouch for, per disk, as Hello reports it. */
export function trackingLost(capture: CycleCapture): Array<{ diskId: string; code: string; reason: string }> {
  return (capture.report?.disks ?? [])
    .filter((d) => d.status !== "ok")
    .map((d) => ({
      diskId: d.diskId,
      // An enable whose ack never came is told apart: the site lets an interrupted initial replication go on by itself.
      code:
        d.unacknowledgedEnableSeq !== undefined
          ? ENABLE_UNACKNOWLEDGED
          : d.status === "not-enabled"
            ? "NOT_ENABLED"
            : /inconsistent/.test(d.reason ?? "")
              ? "BITMAP_INCONSISTENT"
              : /missing/.test(d.reason ?? "")
                ? "BITMAP_MISSING"
                : "TRACKING_LOST",
      reason: d.reason ?? (d.status === "not-enabled" ? "no change tracking on this agent (first start, or its state directory was lost)" : "change tracking lost"),
    }));
}

/** The Hello for one VM: who replicates it at which generation, its disks, what this agent can do and what it lost. */
export function helloMessage(vm: AgentVmConfig, siteId: string, generation: bigint, capture: CycleCapture, lost: Array<{ diskId: string; code: string; reason: string }>): Hello {
  return {
    protocolVersion: PROTOCOL_VERSION,
    sourceSiteId: siteId,
    agentId: siteId,
    vmId: vm.id,
    generation,
    disks: (capture.report?.disks ?? []).map((d) => ({ diskId: d.diskId, virtualSizeBytes: BigInt(d.sizeBytes) })),
    supportedCodecs: [CompressionCodec.COMPRESSION_CODEC_ZSTD, CompressionCodec.COMPRESSION_CODEC_NONE],
    supportedChecksumAlgorithms: offeredChecksums(vm),
    resyncDigests: offeredResyncDigests(vm),
    // A libvirt domain without a configured spec: the one its XML describes.
    vmSpecJson: vm.spec || capture.derivedSpec ? JSON.stringify(vm.spec ?? capture.derivedSpec) : "",
    trackingLost: lost,
    resyncMode: vm.resync === "manual" ? ResyncMode.RESYNC_MODE_MANUAL : ResyncMode.RESYNC_MODE_AUTOMATIC,
    policyName: vm.policy ?? "",
    configuredIntervalSeconds: Math.round(vm.intervalSeconds),
    configuredCompressionLevel: vm.compressionLevel,
    initialReplication: vm.initialReplication.kind,
    upstreamFailover: vm.upstreamFailover ?? "",
    ...(vm.initialReplication.kind === "at" ? { initialReplicationAt: vm.initialReplication.at } : {}),
  };
}

/** Chunk checksums this agent can compute, the one it prefers first (see common.proto). */
export function offeredChecksums(vm: AgentVmConfig): ChecksumAlgorithm[] {
  return vm.chunkChecksum === "sha256"
    ? [ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256]
    : [ChecksumAlgorithm.CHECKSUM_ALGORITHM_ZSTD_FRAME, ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256];
}

/** BLAKE3 first unless the VM asks for SHA-256 or this host has no BLAKE3; SHA-256 always. */
export function offeredResyncDigests(vm: AgentVmConfig): ChunkDigest[] {
  return vm.resyncDigest === "blake3" && blake3Installed() ? [ChunkDigest.CHUNK_DIGEST_BLAKE3, ChunkDigest.CHUNK_DIGEST_SHA256] : [ChunkDigest.CHUNK_DIGEST_SHA256];
}

/** The chunk checksum this agent sends with: its first the site accepts. */
export function pickChecksum(vm: AgentVmConfig, accepted: ChecksumAlgorithm[]): ChecksumAlgorithm {
  // A site that lists nothing predates the negotiation and verifies SHA-256 only.
  if (accepted.length === 0) return ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256;
  const pick = offeredChecksums(vm).find((a) => accepted.includes(a));
  if (pick === undefined) {
    throw new Error(
      `the replica site accepts none of this agent's chunk checksums (it accepts ${accepted.map((a) => ChecksumAlgorithm[a] ?? a).join(", ")}); upgrade the agent or change vms[].chunkChecksum`,
    );
  }
  return pick;
}

/**
 * Says what became of a cycle whose CycleEnd went out but whose ack never came, once HelloAck
 * tells whether the site committed it (`lastCommitted`).
 */
export function logUnacknowledgedCycle(logger: Logger, vmId: string, seq: number, lastCommitted: number, trackingLost: boolean): void {
  if (lastCommitted >= seq && trackingLost) {
    // An initial (or resync) cycle: its bitmap was never confirmed, so a resync compares instead.
    logger.warn(
      { vm: vmId, seq, lastCommitted },
      `cycle ${seq} was committed by the replica site before its ack was lost; change tracking was not confirmed, so the next cycle compares the disks with that point and sends only what differs`,
    );
  } else if (lastCommitted >= seq) {
    logger.warn({ vm: vmId, seq, lastCommitted }, `cycle ${seq} was committed by the replica site before its ack was lost; its changes are sent again in the next cycle`);
  } else {
    logger.warn({ vm: vmId, seq, lastCommitted }, `cycle ${seq} was not committed by the replica site; its changes are sent in the next cycle`);
  }
}
