import { execFileSync } from "node:child_process";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Logger } from "../../../src/common/logger.js";
import {
  PkiFileExistsError,
  PkiInvalidNameError,
  TlsCertificateNotFromCaError,
  TlsCertificateNotValidNowError,
  TlsFileInvalidError,
  TlsFileMissingError,
  TlsKeyMismatchError,
  UnauthenticatedPeerError,
  certificateIdentity,
  createCa,
  grpcChannelOptions,
  grpcServerOptions,
  issueCertificate,
  loadSiteCredentials,
  peerIdentity,
  type CaFiles,
  type IssuedFiles,
} from "../../../src/transport/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const tmp = makeTmpDir("qr-pki-");
let ca: CaFiles;
let otherCa: CaFiles;
let siteA: IssuedFiles;
let siteB: IssuedFiles;
let stranger: IssuedFiles;

beforeAll(async () => {
  ca = await createCa({ dir: join(tmp.path, "ca"), name: "qreplica test CA", days: 30 });
  otherCa = await createCa({ dir: join(tmp.path, "other-ca"), name: "someone else", days: 30 });
  siteA = await issueCertificate({ caDir: ca.dir, name: "site-a", dir: join(tmp.path, "a"), sans: ["localhost", "127.0.0.1"], days: 10 });
  siteB = await issueCertificate({ caDir: ca.dir, name: "site-b", dir: join(tmp.path, "b"), days: 10 });
  stranger = await issueCertificate({ caDir: otherCa.dir, name: "site-a", dir: join(tmp.path, "x"), days: 10 });
});
afterAll(() => tmp.cleanup());

describe("pki", () => {
  it("makes a CA and a dual-use certificate with private keys only the owner can read", () => {
    expect(statSync(ca.keyFile).mode & 0o777).toBe(0o600);
    expect(statSync(siteA.keyFile).mode & 0o777).toBe(0o600);
    expect(siteA.caFile).toBe(ca.certFile);
    const text = execFileSync("openssl", ["x509", "-in", siteA.certFile, "-noout", "-text"], { encoding: "utf8" });
    expect(text).toMatch(/TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(text).toMatch(/CA:FALSE/);
    execFileSync("openssl", ["verify", "-CAfile", ca.certFile, siteA.certFile]);
  });

  it("reads the identity back: CN, SANs, fingerprint as openssl prints it, expiry", () => {
    const id = certificateIdentity(readFileSync(siteA.certFile));
    expect(id.commonName).toBe("site-a");
    expect(id.sans).toEqual(["site-a", "localhost", "127.0.0.1"]);
    const fp = execFileSync("openssl", ["x509", "-in", siteA.certFile, "-noout", "-fingerprint", "-sha256"], { encoding: "utf8" });
    expect(fp.trim().split("=")[1]).toBe(id.fingerprintSha256);
    const days = (id.notAfter.getTime() - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(9);
    expect(days).toBeLessThanOrEqual(10);
    expect(id.issuer).toBe("CN=qreplica test CA");
  });

  it("refuses to overwrite keys and names that cannot be identities", async () => {
    await expect(createCa({ dir: ca.dir, name: "again" })).rejects.toBeInstanceOf(PkiFileExistsError);
    await expect(issueCertificate({ caDir: ca.dir, name: "site-a", dir: join(tmp.path, "a") })).rejects.toThrow(/site-a\.key already exists/);
    await expect(issueCertificate({ caDir: ca.dir, name: "../evil", dir: tmp.path })).rejects.toBeInstanceOf(PkiInvalidNameError);
    await expect(issueCertificate({ caDir: ca.dir, name: "ok", dir: tmp.path, sans: ["bad name"] })).rejects.toBeInstanceOf(PkiInvalidNameError);
  });

  it("names the CA directory when it has no CA, and leaves no orphan key behind", async () => {
    const dir = join(tmp.path, "orphan");
    await expect(issueCertificate({ caDir: join(tmp.path, "nope"), name: "site-c", dir })).rejects.toThrow(/run createCa there first/);
    await issueCertificate({ caDir: ca.dir, name: "site-c", dir });
  });
});

describe("loadSiteCredentials", () => {
  it("loads matching files and reports the site's identity", () => {
    const creds = loadSiteCredentials({ caFile: ca.certFile, certFile: siteA.certFile, keyFile: siteA.keyFile });
    expect(creds.identity.commonName).toBe("site-a");
    expect(creds.key.toString()).toMatch(/PRIVATE KEY/);
  });

  it("names the missing file", () => {
    const missing = join(tmp.path, "nope.crt");
    expect(() => loadSiteCredentials({ caFile: ca.certFile, certFile: missing, keyFile: siteA.keyFile })).toThrow(TlsFileMissingError);
    expect(() => loadSiteCredentials({ caFile: ca.certFile, certFile: missing, keyFile: siteA.keyFile })).toThrow(missing);
  });

  it("spots a key given as the CA file, and an encrypted key", () => {
    expect(() => loadSiteCredentials({ caFile: ca.keyFile, certFile: siteA.certFile, keyFile: siteA.keyFile })).toThrow(/not ca\.key/);
    const encrypted = join(tmp.path, "enc.key");
    execFileSync("openssl", ["pkey", "-in", siteA.keyFile, "-aes256", "-passout", "pass:secret", "-out", encrypted]);
    expect(() => loadSiteCredentials({ caFile: ca.certFile, certFile: siteA.certFile, keyFile: encrypted })).toThrow(TlsFileInvalidError);
  });

  it("refuses a key that belongs to another certificate", () => {
    expect(() => loadSiteCredentials({ caFile: ca.certFile, certFile: siteA.certFile, keyFile: siteB.keyFile })).toThrow(TlsKeyMismatchError);
  });

  it("refuses a certificate from another CA, which its peers would refuse", () => {
    expect(() => loadSiteCredentials({ caFile: ca.certFile, certFile: stranger.certFile, keyFile: stranger.keyFile })).toThrow(TlsCertificateNotFromCaError);
  });

  it("accepts a CA bundle holding the issuer among others", () => {
    const bundle = join(tmp.path, "bundle.crt");
    writeFileSync(bundle, readFileSync(otherCa.certFile, "utf8") + readFileSync(ca.certFile, "utf8"));
    expect(loadSiteCredentials({ caFile: bundle, certFile: siteA.certFile, keyFile: siteA.keyFile }).identity.commonName).toBe("site-a");
  });

  it("refuses an expired certificate and warns before expiry", () => {
    const files = { caFile: ca.certFile, certFile: siteA.certFile, keyFile: siteA.keyFile };
    expect(() => loadSiteCredentials(files, { now: new Date(Date.now() + 11 * 86_400_000) })).toThrow(TlsCertificateNotValidNowError);
    const warnings: string[] = [];
    const logger = { warn: (_o: unknown, msg: string) => warnings.push(msg) } as unknown as Logger;
    loadSiteCredentials(files, { logger });
    expect(warnings.join()).toMatch(/expires within 30 days/);
  });
});

describe("peerIdentity and options", () => {
  it("refuses a call without a verified client certificate", () => {
    expect(() => peerIdentity({ getAuthContext: () => ({}) })).toThrow(UnauthenticatedPeerError);
    expect(() => peerIdentity({ getAuthContext: () => null })).toThrow(UnauthenticatedPeerError);
  });

  it("lets clients ping as often as their keepalive without the server objecting", () => {
    expect(grpcServerOptions["grpc.http2.min_ping_interval_without_data_ms"]).toBeLessThan(grpcChannelOptions["grpc.keepalive_time_ms"]!);
    expect(grpcChannelOptions["grpc.max_receive_message_length"]).toBe(8 * 1024 * 1024);
    expect(grpcServerOptions["grpc.max_receive_message_length"]).toBe(8 * 1024 * 1024);
  });
});
