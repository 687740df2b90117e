import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RejectReason, ResumeHint } from "../../../src/gen/qreplica/v1/replication.js";
import { createCa, issueCertificate } from "../../../src/transport/index.js";
import { AUDIT_STREAM } from "../../../src/site/controlPlane/refusalAudit.js";
import { StreamEndedError, fileCredentials, msg, rawCredentials, type ProtocolClient } from "../../helpers/protocolClient.js";
import { ExpectedDisk, MiB, initialCycle, startSiteB, type SiteB } from "./siteB.js";

// Invariant 6 against a real `qreplica site serve`: no disk data from an unauthenticated or
// unauthorized peer, and the ledger is not touched on their behalf (an unauthorized but CA-signed
// primary's refused Hello is only recorded in the audit stream; a peer the TLS layer refuses never
// reaches the site's code).

let site: SiteB;
beforeAll(async () => {
  site = await startSiteB("qr-sec-auth-");
});
afterAll(async () => {
  await site?.stop();
});

const disk = () => new ExpectedDisk("vda", 8 * MiB);

/** Sends a Hello and returns how the stream ended; fails if the site answered anything. */
async function refusedBeforeAnyAnswer(c: ProtocolClient, vmId: string): Promise<StreamEndedError> {
  await c.send(msg.hello({ vmId, generation: 0, disks: [disk().spec] }));
  const err = await c.next(20_000).then(
    (r) => {
      throw new Error(`the site answered ${r.body?.$case}`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StreamEndedError);
  return err as StreamEndedError;
}

describe("site B refuses unauthenticated peers at the TLS layer", () => {
  it("a client certificate from another CA (even with the authorized name agent-a) ends UNAVAILABLE and writes nothing", async () => {
    const other = await createCa({ dir: join(site.tmp, "other-ca"), name: "impostor CA", days: 2 });
    // Same CN and SANs as the real, authorized agent: only the issuer differs.
    const forged = await issueCertificate({ caDir: other.dir, name: "agent-a", dir: join(site.tmp, "forged"), sans: ["localhost", "127.0.0.1"], days: 2 });
    const before = (await site.events()).length;

    const c = site.open(rawCredentials(site.caFile, forged));
    const ended = await refusedBeforeAnyAnswer(c, "vm-forged");
    expect(ended.status.code).toBe(status.UNAVAILABLE);
    expect((await c.status).code).toBe(status.UNAVAILABLE);

    expect(await site.events("vm-forged")).toEqual([]);
    expect((await site.events()).length).toBe(before);
    expect(site.storageFiles("vm-forged", "vda")).toEqual([]);
  });

  it("a TLS client presenting no certificate ends UNAVAILABLE and writes nothing", async () => {
    const before = (await site.events()).length;
    const c = site.open(rawCredentials(site.caFile));
    const ended = await refusedBeforeAnyAnswer(c, "vm-nocert");
    expect(ended.status.code).toBe(status.UNAVAILABLE);

    expect(await site.events("vm-nocert")).toEqual([]);
    expect((await site.events()).length).toBe(before);
  });
});

describe("site B refuses a CA-signed primary that is not in its authorization entries", () => {
  it("agent-x gets UNAUTHORIZED / PERMISSION_DENIED naming the fix, nothing is recorded, and agent-a keeps replicating", async () => {
    const agentX = await issueCertificate({ caDir: site.env.caDir, name: "agent-x", dir: join(site.tmp, "agent-x"), sans: ["localhost"], days: 2 });

    // An authorized session is open before and stays open across the refusal.
    const a = site.open();
    const ack = await a.hello({ vmId: "vm-authz-ok", generation: 0, disks: [disk().spec] });
    expect(ack.generation).toBe(1n);
    expect(ack.resumeHint).toBe(ResumeHint.RESUME_HINT_INITIAL_REPLICATION);
    const before = (await site.events()).length;

    const x = site.open(fileCredentials({ caFile: site.caFile, certFile: agentX.certFile, keyFile: agentX.keyFile }));
    await x.send(msg.hello({ vmId: "vm-authz-x", generation: 0, disks: [disk().spec] }));
    const rejected = await x.expect("helloRejected");
    expect(rejected.reason).toBe(RejectReason.REJECT_REASON_UNAUTHORIZED);
    expect(rejected.message).toContain("agent-x");
    expect(rejected.message).toContain("qreplica authorize");
    expect(rejected.message).toContain("--primary agent-x");
    const st = await x.waitStatus();
    expect(st.code).toBe(status.PERMISSION_DENIED);
    expect(st.details).toContain("agent-x");

    // agent-x may not even take over a VM that agent-a replicates.
    const y = site.open(fileCredentials({ caFile: site.caFile, certFile: agentX.certFile, keyFile: agentX.keyFile }));
    await y.send(msg.hello({ vmId: "vm-authz-ok", generation: 1, disks: [disk().spec] }));
    expect((await y.expect("helloRejected")).reason).toBe(RejectReason.REJECT_REASON_UNAUTHORIZED);
    expect((await y.waitStatus()).code).toBe(status.PERMISSION_DENIED);

    expect(await site.events("vm-authz-x")).toEqual([]);
    const all = await site.events();
    expect(all.filter((e) => e.stream !== AUDIT_STREAM).length).toBe(before);
    expect(site.storageFiles("vm-authz-x", "vda")).toEqual([]);
    // Audited: the first refusal at once; the second (same identity, within the minute) is counted for later.
    expect(all.filter((e) => e.stream === AUDIT_STREAM).map((e) => e.data)).toEqual([
      expect.objectContaining({ identity: "agent-x", role: "agent", rpc: "Replicate", needed: "authorization", reason: "PRIMARY_NOT_AUTHORIZED", vmIds: ["vm-authz-x"], count: 1 }),
    ]);

    // The server kept serving: agent-a's stream (opened before) commits a full cycle.
    const expected = disk();
    const cycleAck = await initialCycle(a, { vmId: "vm-authz-ok", generation: 1, seq: Number(ack.lastCommittedCycleSequence) + 1, disk: expected });
    expect(cycleAck.recoveryPointId).toBe("rp-1");
    const state = await site.relationship("vm-authz-ok");
    expect(state.state).toBe("replicating");
    expect(state.primaryIdentity).toBe("agent-a");
    const cmp = await expected.compareWithPoint(state.points[0]!.disks[0]!.imagePath, join(site.tmp, "authz-ok.raw"));
    expect(cmp.detail).toMatch(/identical/i);
    expect((await a.finish()).code).toBe(status.OK);
  });
});
