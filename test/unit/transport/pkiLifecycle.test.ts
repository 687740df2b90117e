/** Two-step issuance and revocation with the real openssl CLI: what each file holds, who may sign what, and that a CRL is only believed from the CA. */
import { readFileSync, statSync, writeFileSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CrlInvalidError,
  PkiFileExistsError,
  PkiInvalidNameError,
  RevocationList,
  certificateIdentity,
  createCa,
  createCertificateRequest,
  generateCrl,
  issueCertificate,
  loadCrl,
  loadSiteCredentials,
  revokeCertificate,
  signCertificateRequest,
  type CaFiles,
} from "../../../src/transport/index.js";
import { openssl } from "../../../src/transport/pki.js";
import { waitFor } from "../../helpers/processes.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const tmp = makeTmpDir("qr-pki-life-");
let ca: CaFiles;
let otherCa: CaFiles;
beforeAll(async () => {
  ca = await createCa({ dir: join(tmp.path, "ca"), name: "life CA", days: 30 });
  otherCa = await createCa({ dir: join(tmp.path, "other-ca"), name: "other CA", days: 30 });
}, 60_000);
afterAll(() => tmp.cleanup());

const mode = (f: string) => statSync(f).mode & 0o777;

describe("pki request / sign", () => {
  it("the host makes its key (0600) and a request without any key material; the CA host signs it with the role it chooses", async () => {
    const host = join(tmp.path, "site-host");
    const req = await createCertificateRequest({ name: "site-c", dir: host, sans: ["localhost", "127.0.0.1", "site-c.dc1.example"] });
    expect(mode(req.keyFile)).toBe(0o600);
    expect(mode(req.csrFile)).toBe(0o600);
    expect(readFileSync(req.csrFile, "utf8")).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----/);
    expect(readFileSync(req.csrFile, "utf8")).not.toContain("PRIVATE KEY");

    const certFile = join(tmp.path, "ca-host-out", "site-c.crt");
    const signed = await signCertificateRequest({ caDir: ca.dir, csrFile: req.csrFile, out: certFile, role: "operator", days: 10 });
    expect(mode(certFile)).toBe(0o600);
    expect(signed).toMatchObject({ name: "site-c", role: "operator" });
    const id = certificateIdentity(readFileSync(certFile), certFile);
    expect(id).toMatchObject({ commonName: "site-c", role: "operator" });
    expect(id.sans).toEqual(expect.arrayContaining(["site-c", "localhost", "127.0.0.1", "site-c.dc1.example"]));
    expect(id.notAfter.getTime() - Date.now()).toBeLessThan(11 * 24 * 3600 * 1000);
    // The certificate goes back to the host and works with the key that never left it.
    const creds = loadSiteCredentials({ caFile: ca.certFile, certFile, keyFile: req.keyFile });
    expect(creds.identity.commonName).toBe("site-c");
    await expect(signCertificateRequest({ caDir: ca.dir, csrFile: req.csrFile, out: certFile })).rejects.toBeInstanceOf(PkiFileExistsError);
  }, 60_000);

  it("a request that asks for a role (a URI name) is refused: the role is the CA's decision", async () => {
    const dir = join(tmp.path, "sneaky");
    const req = await createCertificateRequest({ name: "agent-x", dir });
    const cnf = join(dir, "sneaky.cnf");
    writeFileSync(cnf, "[req]\nprompt = no\ndistinguished_name = dn\nreq_extensions = ext\n[dn]\nCN = agent-x\n[ext]\nsubjectAltName = DNS:agent-x,URI:urn:qreplica:role:admin\n");
    const csr = join(dir, "sneaky.csr");
    await openssl(["req", "-new", "-config", cnf, "-key", req.keyFile, "-out", csr], "test request");
    await expect(signCertificateRequest({ caDir: ca.dir, csrFile: csr, out: join(dir, "x.crt"), role: "agent" })).rejects.toThrow(PkiInvalidNameError);
    await expect(signCertificateRequest({ caDir: ca.dir, csrFile: csr, out: join(dir, "x.crt") })).rejects.toThrow(/may only ask for DNS names and IP addresses/);
  }, 60_000);
});

describe("pki revoke / crl", () => {
  it("revoking writes the CA's index and a CRL signed by the CA that lists the serial; a list from another CA is not believed", async () => {
    const out = join(tmp.path, "revoked");
    const a = await issueCertificate({ caDir: ca.dir, name: "agent-r", dir: out, role: "agent", days: 5 });
    const b = await issueCertificate({ caDir: ca.dir, name: "agent-s", dir: out, role: "agent", days: 5 });
    const empty = await generateCrl({ caDir: ca.dir });
    expect(mode(empty.crlFile)).toBe(0o600);
    expect((await loadCrl(empty.crlFile, ca.certFile)).serials.size).toBe(0);

    const r = await revokeCertificate({ caDir: ca.dir, certFile: a.certFile, reason: "keyCompromise" });
    const serialA = certificateIdentity(readFileSync(a.certFile)).serialNumber;
    expect(r).toMatchObject({ serialNumber: serialA, alreadyRevoked: false });
    expect(r.revoked).toEqual([expect.objectContaining({ serialNumber: serialA, commonName: "agent-r" })]);
    expect(mode(join(ca.dir, "index.txt"))).toBe(0o600);
    const crl = await loadCrl(r.crlFile, ca.certFile);
    expect([...crl.serials]).toEqual([serialA]);
    expect(crl.nextUpdate!.getTime()).toBeGreaterThan(Date.now() + 29 * 24 * 3600 * 1000);
    expect((await revokeCertificate({ caDir: ca.dir, certFile: a.certFile })).alreadyRevoked).toBe(true);

    // A certificate of another CA cannot be revoked here, and this CA's list does not verify against another CA.
    const foreign = await issueCertificate({ caDir: otherCa.dir, name: "agent-f", dir: join(tmp.path, "foreign"), days: 5 });
    await expect(revokeCertificate({ caDir: ca.dir, certFile: foreign.certFile })).rejects.toThrow(/not issued by the CA/);
    await expect(loadCrl(r.crlFile, otherCa.certFile)).rejects.toBeInstanceOf(CrlInvalidError);

    // By serial: agent-s.
    const serialB = certificateIdentity(readFileSync(b.certFile)).serialNumber;
    const bySerial = await revokeCertificate({ caDir: ca.dir, serial: `0x${serialB.toLowerCase()}` });
    expect(new Set((await loadCrl(bySerial.crlFile, ca.certFile)).serials)).toEqual(new Set([serialA, serialB]));
  }, 60_000);

  it("a site's RevocationList re-reads its file when it changes, and keeps the old list when the new file is not the CA's", async () => {
    const caDir = join(tmp.path, "ca2");
    const ca2 = await createCa({ dir: caDir, name: "watch CA", days: 30 });
    const cert = await issueCertificate({ caDir, name: "agent-w", dir: join(tmp.path, "watch"), days: 5 });
    const id = certificateIdentity(readFileSync(cert.certFile));
    const siteCrl = join(tmp.path, "watch", "site-crl.pem");
    copyFileSync((await generateCrl({ caDir })).crlFile, siteCrl);
    const list = await RevocationList.open(siteCrl, ca2.certFile, { pollMs: 100 });
    try {
      expect(list.refusal(id)).toBeUndefined();
      copyFileSync((await revokeCertificate({ caDir, certFile: cert.certFile })).crlFile, siteCrl);
      const message = await waitFor("the new list", () => list.refusal(id), 10_000);
      expect(message).toContain("'agent-w'");
      expect(message).toContain(`serial ${id.serialNumber}`);
      expect(message).toContain(siteCrl);
      // Another CA's (empty) list in its place: ignored, agent-w stays revoked.
      copyFileSync((await generateCrl({ caDir: otherCa.dir })).crlFile, siteCrl);
      await list.check();
      expect(list.refusal(id)).toBeDefined();
    } finally {
      list.close();
    }
  }, 60_000);
});
