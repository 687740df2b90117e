/**
 * The certificate lifecycle with a real `qreplica site serve`, a real agent and the real CLI:
 * site B set up from a signed request (its key never near the CA), certificates near expiry in
 * health, a site certificate renewed on disk served to new connections without a restart while
 * the agent's stream and cycles go on, an agent certificate renewed on disk used at its next
 * dial, and a revoked agent's open stream cut, its reconnection refused at Hello (a revoked viewer
 * on every control call).
 */
import { X509Certificate } from "node:crypto";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:tls";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ControlServiceService } from "../../src/gen/qreplica/v1/control.js";
import { getSqliteEventStore, relationshipStream } from "../../src/ledger/index.js";
import { addressFile, loadSiteConfig } from "../../src/site/siteConfig.js";
import { certificateIdentity } from "../../src/transport/index.js";
import { controlClientAs, rawCall } from "../helpers/controlPlane.js";
import { cliJson, runCli, waitFor, type Daemon } from "../helpers/processes.js";
import { makeTmpDir } from "../helpers/tmpDir.js";
import { setupTwoSites, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
let t: TwoSites;
let tmp: ReturnType<typeof makeTmpDir>;
let site: Daemon;
let siteCert: { certFile: string; keyFile: string; crlFile: string };
const agentCert = () => ({ certFile: join(t.dir, "agent-tls", "agent-a.crt"), keyFile: join(t.dir, "agent-tls", "agent-a.key") });
const caFile = () => join(t.caDir, "ca.crt");
const siteLog = () => readFileSync(join(t.siteB, "site.log"), "utf8");
const agentLog = () => readFileSync(join(t.dir, "agent.log"), "utf8");
const address = () => readFileSync(addressFile(t.siteB), "utf8").trim();
const diag = () => `\n--- agent ---\n${agentLog().slice(-4000)}\n--- site-b ---\n${siteLog().slice(-4000)}`;

interface StatusJson {
  relationships: Array<{ vmId: string; health: string; healthReasons: Array<{ code: string; level: string; message: string }> }>;
}
const certReasons = async () => {
  const s = await cliJson<StatusJson>(["status", "--dir", t.siteB]);
  return s.relationships.find((r) => r.vmId === "vm1")?.healthReasons.filter((r) => r.code === "CERT_EXPIRING") ?? [];
};

/** `pki request` on the "host", `pki sign` on the "CA host", files moved to where they are used (key first, as an operator copies them). */
async function renew(name: string, role: string, days: number, to: { certFile: string; keyFile: string }, hostDir: string): Promise<string> {
  const req = await cliJson<{ keyFile: string; csrFile: string }>(["pki", "request", "--name", name, "--out", hostDir, "--overwrite"]);
  const crt = join(tmp.path, "ca-host", `${name}-${Date.now()}.crt`);
  const signed = await cliJson<{ serialNumber: string; role: string }>([
    "pki",
    "sign",
    "--ca-dir",
    t.caDir,
    "--csr",
    req.csrFile,
    "--role",
    role,
    "--days",
    String(days),
    "--out",
    crt,
  ]);
  expect(signed.role).toBe(role);
  copyFileSync(req.keyFile, to.keyFile);
  copyFileSync(crt, to.certFile);
  return certificateIdentity(readFileSync(to.certFile)).serialNumber;
}

/** The serial a new TLS connection to site B is served. */
function servedSerial(): Promise<string> {
  const [host, port] = [address().replace(/:\d+$/, ""), Number(/:(\d+)$/.exec(address())![1])];
  const a = agentCert();
  return new Promise((resolve, reject) => {
    const s = connect(
      { host, port, ca: readFileSync(caFile()), cert: readFileSync(a.certFile), key: readFileSync(a.keyFile), ALPNProtocols: ["h2"], servername: "localhost" },
      () => {
        const peer = s.getPeerCertificate();
        s.destroy();
        resolve(certificateIdentity(new X509Certificate(peer.raw)).serialNumber);
      },
    );
    s.once("error", reject);
  });
}

async function ledgerCounts(): Promise<{ committed: number; failed: number }> {
  const store = getSqliteEventStore({ path: join(t.siteB, "ledger.sqlite"), create: false });
  try {
    const events = await store.readStream(relationshipStream("vm1"));
    return { committed: events.filter((e) => e.type === "CycleCommitted").length, failed: events.filter((e) => e.type === "CycleFailed").length };
  } finally {
    await store.close();
  }
}

beforeAll(async () => {
  tmp = makeTmpDir("qr-certs-");
  t = await setupTwoSites(tmp.path, { diskBytes: 8 * MiB, intervalSeconds: 1 });
  const config = loadSiteConfig(t.siteB);
  siteCert = { certFile: config.certFile, keyFile: config.keyFile, crlFile: join(t.siteB, "tls", "crl.pem") };
  // Site B's certificate from a request made "on its host", valid 20 days: CERT_EXPIRING.
  await renew("site-b", "agent", 20, siteCert, join(tmp.path, "site-b-host"));
  // agent-a's valid 10 days.
  await renew("agent-a", "agent", 10, agentCert(), join(tmp.path, "agent-host"));
  // The CA's (empty) revocation list, named in site.json.
  const crl = await cliJson<{ crlFile: string; revoked: unknown[] }>(["pki", "crl", "--ca-dir", t.caDir]);
  expect(crl.revoked).toEqual([]);
  copyFileSync(crl.crlFile, siteCert.crlFile);
  const siteJson = join(t.siteB, "site.json");
  writeFileSync(siteJson, JSON.stringify({ ...(JSON.parse(readFileSync(siteJson, "utf8")) as object), crlFile: siteCert.crlFile }, null, 2), { mode: 0o600 });
  site = await t.startSite(t.siteB);
  t.startAgent();
  await waitFor("vm1 replicating with points", async () => ((await ledgerCounts()).committed >= 2 ? true : undefined), 120_000).catch((e: Error) => {
    throw new Error(e.message + diag());
  });
}, 240_000);
afterAll(async () => {
  await t?.stopAll();
  tmp?.cleanup();
});

describe("certificate lifecycle (real site, agent and CLI)", () => {
  it("a site set up from a signed request serves; its certificate and the agent's expiring within 30 days turn health to Warning CERT_EXPIRING", async () => {
    const reasons = await waitFor("both CERT_EXPIRING reasons", async () => ((await certReasons()).length === 2 ? certReasons() : undefined), 60_000);
    expect(reasons.map((r) => r.level)).toEqual(["warning", "warning"]);
    const site = reasons.find((r) => r.message.startsWith("this site's certificate"))!;
    expect(site.message).toContain(siteCert.certFile);
    expect(site.message).toContain("CN site-b");
    expect(site.message).toMatch(/expires at \d{4}-\d\d-\d\dT.* \(in 20 days\)/);
    const ag = reasons.find((r) => r.message.startsWith("the primary agent's certificate"))!;
    expect(ag.message).toContain("CN agent-a");
    expect(ag.message).toContain("in 10 days");
    const s = await cliJson<StatusJson>(["status", "--dir", t.siteB]);
    expect(s.relationships.find((r) => r.vmId === "vm1")!.health).toBe("warning");
  }, 120_000);

  it("a site certificate renewed on disk is served to new connections within a minute; the agent's open stream and its cycles go on", async () => {
    const before = await servedSerial();
    expect(before).toBe(certificateIdentity(readFileSync(siteCert.certFile)).serialNumber);
    const hellos = (siteLog().match(/Hello accepted/g) ?? []).length;
    const counts = await ledgerCounts();
    const renewed = await renew("site-b", "agent", 400, siteCert, join(tmp.path, "site-b-host"));
    expect(renewed).not.toBe(before);
    const startedAt = Date.now();
    await waitFor("the renewed certificate served", async () => ((await servedSerial()) === renewed ? true : undefined), 60_000, 500);
    const tookMs = Date.now() - startedAt;
    expect(tookMs).toBeLessThan(60_000);
    await waitFor("three more cycles committed", async () => ((await ledgerCounts()).committed >= counts.committed + 3 ? true : undefined), 60_000);
    expect((await ledgerCounts()).failed).toBe(counts.failed);
    expect((siteLog().match(/Hello accepted/g) ?? []).length).toBe(hellos);
    expect(siteLog()).toContain("renewed certificate: new connections get it");
    // Health follows the certificate served: only the agent's is still near expiry.
    const left = await waitFor("the site's CERT_EXPIRING gone", async () => {
      const r = await certReasons();
      return r.length === 1 ? r : undefined;
    });
    expect(left[0]!.message).toContain("CN agent-a");
  }, 180_000);

  it("an agent certificate renewed on disk is used at the agent's next dial, without restarting it", async () => {
    await renew("agent-a", "agent", 400, agentCert(), join(tmp.path, "agent-host"));
    const hellos = (siteLog().match(/Hello accepted/g) ?? []).length;
    // Site B restarts (e.g. its host rebooted): the agent dials again on its own.
    await site.kill("SIGTERM");
    site = await t.startSite(t.siteB);
    await waitFor("the agent's Hello after the site's restart", () => ((siteLog().match(/Hello accepted/g) ?? []).length > hellos ? true : undefined), 90_000).catch((e: Error) => {
      throw new Error(e.message + diag());
    });
    expect(agentLog()).toContain("dialling with the renewed certificate");
    await waitFor("no CERT_EXPIRING left", async () => ((await certReasons()).length === 0 ? true : undefined), 60_000);
  }, 180_000);

  it("a revoked agent's open stream is cut and its reconnection refused at Hello; a revoked viewer on every control call; the site keeps serving others", async () => {
    const viewerDir = join(tmp.path, "viewer");
    const viewer = await cliJson<{ certFile: string; keyFile: string }>([
      "pki",
      "issue",
      "--ca-dir",
      t.caDir,
      "--name",
      "vera",
      "--role",
      "viewer",
      "--out-dir",
      viewerDir,
      "--days",
      "30",
    ]);
    const vera = { caFile: caFile(), certFile: viewer.certFile, keyFile: viewer.keyFile };
    const asVera = controlClientAs(address(), vera);
    try {
      expect((await rawCall(asVera, ControlServiceService.whoAmI.path)).code).toBe(grpc.status.OK);
    } finally {
      asVera.close();
    }
    await cliJson(["pki", "revoke", "--ca-dir", t.caDir, "--cert", agentCert().certFile, "--reason", "keyCompromise"]);
    const r = await cliJson<{ crlFile: string; revoked: Array<{ commonName: string }> }>(["pki", "revoke", "--ca-dir", t.caDir, "--cert", vera.certFile]);
    expect(r.revoked.map((e) => e.commonName).sort()).toEqual(["agent-a", "vera"]);
    copyFileSync(r.crlFile, siteCert.crlFile);
    await waitFor("site B loads the new list", () => (/"revoked":2[,}].*revocation list loaded/.test(siteLog()) ? true : undefined), 30_000);

    const asVera2 = controlClientAs(address(), vera);
    try {
      const refused = await rawCall(asVera2, ControlServiceService.whoAmI.path);
      expect(refused.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(refused.details).toMatch(/'vera' \(serial [0-9A-F]+\) is revoked/);
    } finally {
      asVera2.close();
    }
    // The agent's open stream is cut as the list arrives (no restart of the agent), and its
    // reconnection is refused at Hello; no point is committed after that.
    await waitFor("site B cuts the agent's open stream", () => (/its open stream is cut/.test(siteLog()) ? true : undefined), 30_000);
    await waitFor("the agent refused", () => (/the replica site refused this primary/.test(agentLog()) ? true : undefined), 60_000).catch((e: Error) => {
      throw new Error(e.message + diag());
    });
    expect(agentLog()).toMatch(/certificate of 'agent-a' \(serial [0-9A-F]+\) is revoked/);
    expect(siteLog()).toMatch(/certificate of 'agent-a' \(serial [0-9A-F]+\) is revoked/);
    const committedAtRefusal = (await ledgerCounts()).committed;
    // Refusals are in the audit trail; the site's admin still gets in.
    // Refusals are recorded in windows: wait for the one of these two.
    const audit = await waitFor("both refusals in the audit stream", async () => {
      const text = JSON.stringify(await cliJson<unknown>(["events", "--audit", "--dir", t.siteB]));
      return text.includes("'agent-a'") && text.includes("'vera'") ? text : undefined;
    });
    expect(audit).toContain("CERTIFICATE_REVOKED");
    expect(audit).toContain("its open stream is cut");
    expect((await ledgerCounts()).committed).toBe(committedAtRefusal);
    const admin = controlClientAs(address(), t.admin(t.siteB));
    try {
      expect((await rawCall(admin, ControlServiceService.whoAmI.path)).code).toBe(grpc.status.OK);
    } finally {
      admin.close();
    }
  }, 180_000);

  it("the CLI checks the site against the revocation list: --crl, or the site's crlFile with --dir; a revoked site is refused by name", async () => {
    // The site's list (agent-a and vera revoked) does not list site B: the CLI goes through.
    expect((await cliJson<{ relationships: unknown[] }>(["status", "--dir", t.siteB])).relationships.length).toBe(1);
    const r = await cliJson<{ crlFile: string }>(["pki", "revoke", "--ca-dir", t.caDir, "--cert", siteCert.certFile, "--reason", "keyCompromise"]);
    const cliCrl = join(tmp.path, "cli-crl.pem");
    copyFileSync(r.crlFile, cliCrl);
    const refusedBySite = /certificate of 'site-b' \(serial [0-9A-F]+\) is revoked by the deployment CA[^]*refusing to send it anything/;
    const admin = t.admin(t.siteB);
    for (const args of [
      ["status", "--dir", t.siteB, "--crl", cliCrl],
      ["status", "--site", address(), "--ca", caFile(), "--cert", admin.certFile, "--key", admin.keyFile, "--crl", cliCrl],
    ]) {
      const out = await runCli([...args, "--json"]);
      expect(out.code, out.stdout + out.stderr).not.toBe(0);
      expect(out.stdout + out.stderr).toMatch(refusedBySite);
      expect(out.stdout + out.stderr).not.toMatch(/no site answered/);
    }
    // With --dir alone, the site's own crlFile is the CLI's list.
    copyFileSync(r.crlFile, siteCert.crlFile);
    const byDir = await runCli(["status", "--dir", t.siteB, "--json"]);
    expect(byDir.stdout + byDir.stderr).toMatch(refusedBySite);
    // A file that is no list signed by this CA is an error that names it, not a silent pass.
    const bogus = await runCli(["status", "--dir", t.siteB, "--crl", caFile(), "--json"]);
    expect(bogus.code).not.toBe(0);
    expect(bogus.stdout + bogus.stderr).toMatch(/revocation list .*ca\.crt cannot be read/);
  }, 60_000);
});
