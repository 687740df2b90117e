import { describe, expect, it } from "vitest";
import { ChecksumAlgorithm, CompressionCodec, Consistency, CycleKind } from "../../../src/gen/qreplica/v1/common.js";
import {
  GetStatusResponse,
  ListEventsRequest,
  ListEventsResponse,
  ListRecoveryPointsResponse,
  RelationshipState,
  ReplicationHealth,
} from "../../../src/gen/qreplica/v1/control.js";
import { ChunkDigest, RejectReason, ReplicateRequest, ReplicateResponse, ResumeHint } from "../../../src/gen/qreplica/v1/replication.js";

// Past 2^32 (where a uint32 would wrap) and past 2^53 (where a JS number loses precision).
const bigOffset = 5n * 2n ** 40n + 4096n;
const maxU64 = 2n ** 64n - 1n;
const generation = 2n ** 53n + 7n;
const cutoff = new Date("2026-11-28T18:30:01.234Z");

const requests: ReplicateRequest[] = [
  {
    body: {
      $case: "hello",
      value: {
        protocolVersion: 1,
        sourceSiteId: "site-a",
        agentId: "host-1",
        vmId: "vm-42",
        generation,
        disks: [{ diskId: "vda", virtualSizeBytes: maxU64 }],
        supportedCodecs: [CompressionCodec.COMPRESSION_CODEC_NONE, CompressionCodec.COMPRESSION_CODEC_ZSTD],
        supportedChecksumAlgorithms: [ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256],
        vmSpecJson: "",
        trackingLost: [],
        resyncMode: 0,
        resyncDigests: [ChunkDigest.CHUNK_DIGEST_BLAKE3, ChunkDigest.CHUNK_DIGEST_SHA256],
        policyName: "gold",
        configuredIntervalSeconds: 30,
        configuredCompressionLevel: 3,
        initialReplication: "at",
        initialReplicationAt: new Date("2026-12-05T02:00:00Z"),
        upstreamFailover: "VM vm-42 failed over at site site-b (unplanned, generation 2 there)",
      },
    },
  },
  {
    body: {
      $case: "cycleBegin",
      value: {
        vmId: "vm-42",
        generation,
        cycleSequence: 2n ** 33n,
        kind: CycleKind.CYCLE_KIND_INCREMENTAL,
        quiesceFailure: "guest freeze timed out",
        plannedBytes: 3n * 2n ** 32n,
        groupId: "app1",
        groupCutoffId: "20261205T063512345Z",
        groupMembers: ["vm-41", "vm-42"],
        groupPauseMs: 4.25,
        cutoffTime: cutoff,
        consistency: Consistency.CONSISTENCY_APPLICATION,
        disks: [{ diskId: "vda", virtualSizeBytes: 10n * 2n ** 40n }],
      },
    },
  },
  {
    body: {
      $case: "extentChunk",
      value: {
        generation,
        cycleSequence: 3n,
        diskId: "vda",
        offset: bigOffset,
        length: 4 * 1024 * 1024,
        payload: {
          $case: "data",
          value: { codec: CompressionCodec.COMPRESSION_CODEC_ZSTD, data: Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 1, 2]) },
        },
        checksumAlgorithm: ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256,
        checksum: Buffer.alloc(32, 0xab),
      },
    },
  },
  {
    body: {
      $case: "extentChunk",
      value: {
        generation,
        cycleSequence: 3n,
        diskId: "vdb",
        offset: maxU64 - 4095n,
        length: 0xffff_f000,
        payload: { $case: "zero", value: {} },
        checksumAlgorithm: ChecksumAlgorithm.CHECKSUM_ALGORITHM_UNSPECIFIED,
        checksum: Buffer.alloc(0),
      },
    },
  },
  {
    body: {
      $case: "cycleEnd",
      value: { generation, cycleSequence: 3n, extentCount: 2n, dataBytes: 4n << 20n, zeroBytes: 2n ** 40n, wireBytes: 7n, comparedBytes: 2n ** 36n },
    },
  },
  { body: { $case: "cycleAbort", value: { generation, cycleSequence: 3n, message: "NBD read failed" } } },
];

const responses: ReplicateResponse[] = [
  {
    body: {
      $case: "helloAck",
      value: {
        generation,
        protocolVersion: 1,
        replicaSiteId: "site-b",
        lastCommittedCycleSequence: 2n ** 40n,
        resumeHint: ResumeHint.RESUME_HINT_INCREMENTAL,
        maxChunkBytes: 4 << 20,
        acceptedCodecs: [CompressionCodec.COMPRESSION_CODEC_ZSTD],
        acceptedChecksumAlgorithms: [ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256],
        resyncReason: "",
        resyncDigest: ChunkDigest.CHUNK_DIGEST_BLAKE3,
      },
    },
  },
  {
    body: {
      $case: "helloRejected",
      value: {
        generation: 1n,
        reason: RejectReason.REJECT_REASON_STALE_GENERATION,
        message: "failed over",
        currentGeneration: 2n,
      },
    },
  },
  {
    body: {
      $case: "cycleAck",
      value: { generation, cycleSequence: 3n, recoveryPointId: "rp-0003", committedAt: cutoff },
    },
  },
  {
    body: {
      $case: "cycleRejected",
      value: { generation, cycleSequence: 3n, reason: RejectReason.REJECT_REASON_TOTALS_MISMATCH, message: "2 != 3" },
    },
  },
  {
    body: {
      $case: "chunkRejected",
      value: {
        generation,
        cycleSequence: 3n,
        diskId: "vda",
        offset: bigOffset,
        reason: RejectReason.REJECT_REASON_CHECKSUM_MISMATCH,
        message: "sha256 differs",
      },
    },
  },
  {
    body: {
      $case: "cycleProgress",
      value: { generation, cycleSequence: 3n, extentsReceived: 1n, bytesWritten: 2n ** 35n },
    },
  },
];

describe("wire round trip", () => {
  it.each(requests.map((r) => [r.body?.$case ?? "none", r] as const))("ReplicateRequest %s", (_, msg) => {
    expect(ReplicateRequest.decode(ReplicateRequest.encode(msg).finish())).toEqual(msg);
  });

  it.each(responses.map((r) => [r.body?.$case ?? "none", r] as const))("ReplicateResponse %s", (_, msg) => {
    expect(ReplicateResponse.decode(ReplicateResponse.encode(msg).finish())).toEqual(msg);
  });

  it("keeps uint64 offsets above 2^32 and 2^53 exact as bigint", () => {
    const decoded = ReplicateRequest.decode(ReplicateRequest.encode(requests[3]!).finish());
    if (decoded.body?.$case !== "extentChunk") throw new Error("wrong case");
    expect(typeof decoded.body.value.offset).toBe("bigint");
    expect(decoded.body.value.offset).toBe(maxU64 - 4095n);
  });

  it("round-trips the control plane messages", () => {
    const point = {
      recoveryPointId: "rp-0003",
      sequence: 3n,
      generation,
      cutoffTime: cutoff,
      committedAt: new Date(cutoff.getTime() + 1500),
      consistency: Consistency.CONSISTENCY_CRASH,
      kind: CycleKind.CYCLE_KIND_RESYNC,
      disks: [{ diskId: "vda", virtualSizeBytes: 2n ** 41n, changedBytes: 2n ** 33n, incompressibleBytes: 2n ** 32n, transferredBytes: 2n ** 32n + 7n }],
      changedBytes: 2n ** 33n,
      transferredBytes: 12345n,
      suspectDisks: [{ diskId: "vda", share: 0.9912, baselineShare: 0.0431 }],
      lastClean: false,
      lockedUntil: new Date(cutoff.getTime() + 86_400_000),
      groupId: "app1",
      groupCutoffId: "20261205T063512345Z",
      groupMembers: ["vm-41", "vm-42"],
      groupPauseMs: 4.25,
    };
    const status: GetStatusResponse = {
      siteId: "site-b",
      relationships: [
        {
          vmId: "vm-42",
          state: RelationshipState.RELATIONSHIP_STATE_REPLICATING,
          testFailoverActive: true,
          health: ReplicationHealth.REPLICATION_HEALTH_WARNING,
          generation,
          primarySiteId: "site-a",
          replicaSiteId: "site-b",
          lastRecoveryPoint: point,
          lag: { seconds: 330n, nanos: 500_000_000 },
          healthMessage: "lag above 5 min",
          healthReasons: [{ code: "POINT_LATE", level: ReplicationHealth.REPLICATION_HEALTH_WARNING, message: "lag above 5 min" }],
          policyName: "gold",
          initialReplicationWait: "",
        },
      ],
    };
    expect(GetStatusResponse.decode(GetStatusResponse.encode(status).finish())).toEqual(status);
    const points: ListRecoveryPointsResponse = { recoveryPoints: [point] };
    expect(ListRecoveryPointsResponse.decode(ListRecoveryPointsResponse.encode(points).finish())).toEqual(points);
    const events: ListEventsResponse = {
      events: [
        {
          eventId: "e1",
          stream: "replication-vm-42",
          streamVersion: 7n,
          globalPosition: 2n ** 50n,
          type: "CycleCommitted",
          recordedAt: cutoff,
          dataJson: '{"sequence":"3"}',
          actor: "alice",
          actorRole: "operator",
        },
      ],
      nextPosition: 8n,
      endReached: true,
    };
    expect(ListEventsResponse.decode(ListEventsResponse.encode(events).finish())).toEqual(events);
  });

  it("tells an unset optional vm_id from an empty one", () => {
    expect(ListEventsRequest.decode(ListEventsRequest.encode({ fromPosition: 0n, limit: 0 }).finish()).vmId).toBeUndefined();
    expect(ListEventsRequest.decode(ListEventsRequest.encode({ vmId: "", fromPosition: 0n, limit: 0 }).finish()).vmId).toBe("");
  });
});
