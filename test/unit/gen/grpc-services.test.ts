import { Metadata, Server, ServerCredentials, credentials } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ControlServiceClient,
  ControlServiceService,
  RelationshipState,
  ReplicationHealth,
  type ControlServiceServer,
  type GetStatusResponse,
} from "../../../src/gen/qreplica/v1/control.js";
import {
  ReplicationServiceClient,
  ReplicationServiceService,
  ResumeHint,
  type ReplicateRequest,
  type ReplicateResponse,
  type ReplicationServiceServer,
} from "../../../src/gen/qreplica/v1/replication.js";

// Plaintext on loopback only: this checks that the generated definitions wire up with grpc-js
// under ESM, not transport security (sites use mTLS).
describe("generated gRPC services", () => {
  const server = new Server();
  let address = "";
  let replication: InstanceType<typeof ReplicationServiceClient>;
  let control: InstanceType<typeof ControlServiceClient>;

  beforeAll(async () => {
    const replicationImpl: ReplicationServiceServer = {
      replicate: (call) => {
        call.on("data", (req: ReplicateRequest) => {
          if (req.body?.$case !== "hello") return;
          call.write({
            body: {
              $case: "helloAck",
              value: {
                generation: req.body.value.generation,
                protocolVersion: 1,
                replicaSiteId: "site-b",
                lastCommittedCycleSequence: 0n,
                resumeHint: ResumeHint.RESUME_HINT_INITIAL_REPLICATION,
                maxChunkBytes: 4 << 20,
                acceptedCodecs: [],
                acceptedChecksumAlgorithms: [],
                resyncReason: "",
                resyncDigest: 0,
              },
            },
          });
        });
        call.on("end", () => call.end());
      },
    };
    const unimplemented = (_call: unknown, cb: (err: { code: number; details: string }) => void) => cb({ code: 12, details: "not in this test" });
    const controlImpl: ControlServiceServer = {
      startTestFailover: unimplemented,
      clearSuspectPoints: unimplemented,
      extendReplication: unimplemented,
      verifyPoint: unimplemented,
      seedInitialReplication: unimplemented,
      importInitialReplication: unimplemented,
      stopTestFailover: unimplemented,
      failover: unimplemented,
      completeFailover: unimplemented,
      cancelFailover: unimplemented,
      prepareReverseReplication: unimplemented,
      startReverseReplication: unimplemented,
      pauseReplication: unimplemented,
      resumeReplication: unimplemented,
      resync: unimplemented,
      listAuthorizations: unimplemented,
      addAuthorization: unimplemented,
      removeAuthorization: unimplemented,
      appendRunbookEvents: unimplemented,
      readRunbookRun: unimplemented,
      whoAmI: unimplemented,
      getStatus: (call, cb) =>
        cb(null, {
          siteId: "site-b",
          relationships: [
            {
              vmId: call.request.vmId ?? "all",
              state: RelationshipState.RELATIONSHIP_STATE_REPLICATING,
              testFailoverActive: false,
              health: ReplicationHealth.REPLICATION_HEALTH_NORMAL,
              generation: 1n,
              primarySiteId: "site-a",
              replicaSiteId: "site-b",
              healthMessage: "",
              healthReasons: [],
              policyName: "",
              initialReplicationWait: "",
            },
          ],
        }),
      listRecoveryPoints: (_call, cb) => cb(null, { recoveryPoints: [] }),
      listEvents: (_call, cb) => cb(null, { events: [], nextPosition: 0n, endReached: true }),
    };
    server.addService(ReplicationServiceService, replicationImpl);
    server.addService(ControlServiceService, controlImpl);
    const port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    address = `127.0.0.1:${port}`;
    replication = new ReplicationServiceClient(address, credentials.createInsecure());
    control = new ControlServiceClient(address, credentials.createInsecure());
  });

  afterAll(() => {
    replication?.close();
    control?.close();
    server.forceShutdown();
  });

  it("streams Replicate both ways with bigint generations intact", async () => {
    const call = replication.replicate();
    const first = new Promise<ReplicateResponse>((resolve) => call.once("data", resolve));
    const generation = 2n ** 60n + 1n;
    call.write({
      body: {
        $case: "hello",
        value: {
          protocolVersion: 1,
          sourceSiteId: "site-a",
          agentId: "h1",
          vmId: "vm-1",
          generation,
          disks: [],
          supportedCodecs: [],
          supportedChecksumAlgorithms: [],
          vmSpecJson: "",
          trackingLost: [],
          resyncMode: 0,
          resyncDigests: [],
          policyName: "",
          configuredIntervalSeconds: 0,
          configuredCompressionLevel: 0,
          initialReplication: "",
          upstreamFailover: "",
        },
      },
    });
    const ack = await first;
    call.end();
    expect(ack.body?.$case).toBe("helloAck");
    expect(ack.body?.$case === "helloAck" && ack.body.value.generation).toBe(generation);
  });

  it("answers unary control calls under a deadline", async () => {
    const res = await new Promise<GetStatusResponse>((resolve, reject) =>
      control.getStatus({ vmId: "vm-9" }, new Metadata(), { deadline: Date.now() + 5000 }, (err, r) => (err ? reject(err) : resolve(r))),
    );
    expect(res.relationships[0]?.vmId).toBe("vm-9");
  });
});
