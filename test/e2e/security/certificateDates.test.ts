import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ControlServiceClient, ControlServiceService } from "../../../src/gen/qreplica/v1/control.js";
import { TlsCertificateNotValidNowError, createCa, grpcChannelOptions, issueCertificate, loadSiteCredentials } from "../../../src/transport/index.js";
import { HEALTH_STREAM_PREFIX } from "../../../src/site/health/monitor.js";
import { issueWithDates } from "../../helpers/certDates.js";
import { controlClientAs, rawCall, type CredentialFiles } from "../../helpers/controlPlane.js";
import { StreamEndedError, msg, rawCredentials } from "../../helpers/protocolClient.js";
import { MiB, startSiteB, type SiteB } from "./siteB.js";

// Certificates signed by the deployment CA but outside their validity dates, and certificates of
// another CA claiming a strong role, against a real `qreplica site serve`: the TLS layer refuses
// them on the data plane and the control plane alike, nothing is recorded on their behalf, and
// the site keeps serving. Our own loaders refuse such files before dialling, with a typed error.
// (Another CA on the data plane: authentication.test.ts; each role on each RPC: roles.test.ts.)

let site: SiteB;
const certs: Record<"expiredAgent" | "futureAgent" | "expiredAdmin" | "futureAdmin" | "otherCaAdmin", CredentialFiles> = {} as never;
const DAY = 24 * 3600 * 1000;
beforeAll(async () => {
  site = await startSiteB("qr-sec-dates-");
  const dir = join(site.tmp, "dated");
  const now = Date.now();
  const past = { notBefore: new Date(now - 30 * DAY), notAfter: new Date(now - DAY) };
  const future = { notBefore: new Date(now + DAY), notAfter: new Date(now + 30 * DAY) };
  // agent-a is the identity authorized on site B: only the dates are wrong.
  certs.expiredAgent = await issueWithDates({ caDir: site.env.caDir, name: "agent-a", role: "agent", dir: join(dir, "expired"), ...past });
  certs.futureAgent = await issueWithDates({ caDir: site.env.caDir, name: "agent-a", role: "agent", dir: join(dir, "future"), ...future });
  certs.expiredAdmin = await issueWithDates({ caDir: site.env.caDir, name: "ada-admin", role: "admin", dir: join(dir, "expired"), ...past });
  certs.futureAdmin = await issueWithDates({ caDir: site.env.caDir, name: "ada-admin", role: "admin", dir: join(dir, "future"), ...future });
  const other = await createCa({ dir: join(site.tmp, "other-ca"), name: "impostor CA", days: 2 });
  const forged = await issueCertificate({ caDir: other.dir, name: "ada-admin", dir: join(site.tmp, "forged"), sans: ["localhost", "127.0.0.1"], role: "admin", days: 2 });
  certs.otherCaAdmin = { caFile: forged.caFile, certFile: forged.certFile, keyFile: forged.keyFile };
}, 120_000);
afterAll(async () => {
  await site?.stop();
});

/** Ledger events other than the site's own health evaluations (recorded whenever it evaluates). */
const recorded = async () => (await site.events()).filter((e) => !e.stream.startsWith(HEALTH_STREAM_PREFIX)).length;

/** A control call with `files` presented as they are (no client-side checks), trusting site B's CA. */
async function whoAmIWith(files: CredentialFiles): Promise<{ code: grpc.status; details: string }> {
  const client = new ControlServiceClient(site.address, rawCredentials(site.caFile, files), grpcChannelOptions);
  try {
    return await rawCall(client, ControlServiceService.whoAmI.path);
  } finally {
    client.close();
  }
}

describe("certificates outside their validity dates", () => {
  it("our loaders refuse them before dialling, naming the file and the date", () => {
    for (const [files, words] of [
      [certs.expiredAgent, /expired at .*issue a new one/],
      [certs.futureAdmin, /not valid before .*check this host's clock/],
    ] as const) {
      const err = (() => {
        try {
          loadSiteCredentials(files);
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      expect(err).toBeInstanceOf(TlsCertificateNotValidNowError);
      expect((err as Error).message).toContain(files.certFile);
      expect((err as Error).message).toMatch(words);
    }
  });

  it("the site refuses an expired or not-yet-valid agent certificate at the TLS layer: no answer, nothing recorded", async () => {
    const before = await recorded();
    for (const files of [certs.expiredAgent, certs.futureAgent]) {
      const c = site.open(rawCredentials(site.caFile, files));
      await c.send(msg.hello({ vmId: "vm-dated", generation: 0, disks: [{ diskId: "vda", sizeBytes: 8 * MiB }] }));
      const err = await c.next(20_000).then(
        (r) => new Error(`the site answered ${r.body?.$case}`),
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StreamEndedError);
      expect((err as StreamEndedError).status.code).toBe(grpc.status.UNAVAILABLE);
    }
    expect(await site.events("vm-dated")).toEqual([]);
    expect(await recorded()).toBe(before);
    expect(site.storageFiles("vm-dated", "vda")).toEqual([]);
  });

  it("the control plane refuses expired, not-yet-valid and other-CA admin certificates; the real admin still gets in", async () => {
    const before = await recorded();
    for (const files of [certs.expiredAdmin, certs.futureAdmin, certs.otherCaAdmin]) {
      const r = await whoAmIWith(files);
      expect({ cert: files.certFile, code: grpc.status[r.code] }).toEqual({ cert: files.certFile, code: "UNAVAILABLE" });
    }
    expect(await recorded()).toBe(before);
    const admin = controlClientAs(site.address, site.admin);
    try {
      expect((await rawCall(admin, ControlServiceService.whoAmI.path)).code).toBe(grpc.status.OK);
    } finally {
      admin.close();
    }
  });
});
