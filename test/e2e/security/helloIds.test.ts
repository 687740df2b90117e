import { readdirSync } from "node:fs";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChunkDigest, RejectReason } from "../../../src/gen/qreplica/v1/replication.js";
import { msg } from "../../helpers/protocolClient.js";
import { MiB, startSiteB, type SiteB } from "./siteB.js";

// The data plane of a real site refuses malformed VM and disk ids in Hello before it authorizes,
// records or stores anything: ids become ledger streams and directories under the storage root.

let site: SiteB;
beforeAll(async () => {
  site = await startSiteB("qr-sec-ids-");
});
afterAll(async () => {
  await site?.stop();
});

describe("Hello ids (real site, mutual TLS)", () => {
  it.each([
    ["VM id", "../../evil", [{ diskId: "vda", sizeBytes: 8 * MiB }]],
    ["VM id", "/tmp/evil", [{ diskId: "vda", sizeBytes: 8 * MiB }]],
    ["disk id", "vm-ok", [{ diskId: "../vda", sizeBytes: 8 * MiB }]],
  ])("refuses a malformed %s (%s) with INVALID_ARGUMENT and records nothing", async (kind, vmId, disks) => {
    const eventsBefore = (await site.events()).length;
    const storageBefore = readdirSync(site.storageRoot);
    const s = site.open();
    await s.send(msg.hello({ vmId, generation: 0, disks }));
    const rejected = await s.expect("helloRejected");
    expect(rejected.reason).toBe(RejectReason.REJECT_REASON_UNKNOWN_VM);
    expect(rejected.message).toContain(`${kind} `);
    expect(rejected.message).toContain("is not a valid id");
    const st = await s.waitStatus();
    expect(st.code).toBe(status.INVALID_ARGUMENT);
    expect((await site.events()).length).toBe(eventsBefore);
    expect(readdirSync(site.storageRoot)).toEqual(storageBefore);
  });

  it.each([
    ["BLAKE3, its index's digest, when offered", [ChunkDigest.CHUNK_DIGEST_BLAKE3, ChunkDigest.CHUNK_DIGEST_SHA256], ChunkDigest.CHUNK_DIGEST_BLAKE3],
    ["SHA-256 when only that is offered", [], ChunkDigest.CHUNK_DIGEST_SHA256],
  ])("names in HelloAck the digest it compares a resync with: %s", async (_what, offered, named) => {
    const s = site.open();
    const ack = await s.hello({ vmId: `vm-digest-${offered.length}`, generation: 0, disks: [{ diskId: "vda", sizeBytes: 8 * MiB }], resyncDigests: offered });
    expect(ack.resyncDigest).toBe(named);
    s.close();
  });
});
