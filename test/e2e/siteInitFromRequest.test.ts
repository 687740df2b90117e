/**
 * Issue 11, certificate lifecycle: a site set up on a host that never holds the CA's key.
 * `site init --ca-cert` makes the site's and the local admin's keys and requests; `site serve`
 * refuses until they are signed, naming the request and the command; once `pki sign` ran on the
 * "CA host" the site serves and the local admin's CLI reads it.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addressFile } from "../../src/site/siteConfig.js";
import { certificateIdentity } from "../../src/transport/index.js";
import { CLI, cliJson, runCli, startDaemon, waitFor, type Daemon } from "../helpers/processes.js";
import { makeTmpDir } from "../helpers/tmpDir.js";

let tmp: ReturnType<typeof makeTmpDir>;
let caDir: string;
let site: Daemon | undefined;

interface InitJson {
  certificate: string;
  pendingCertificates: Array<{ csrFile: string; role: string; certFile: string; signCommand: string }>;
}

beforeAll(async () => {
  tmp = makeTmpDir("qr-siteinit-csr-");
  caDir = join(tmp.path, "ca-host");
  await cliJson(["pki", "create-ca", "--dir", caDir]);
});
afterAll(async () => {
  await site?.kill("SIGTERM");
  tmp?.cleanup();
});

describe("site init from a certificate request (the CA key stays on the CA host)", () => {
  it("makes keys and requests only, refuses to serve until they are signed, then serves", { timeout: 120_000 }, async () => {
    const dir = join(tmp.path, "site-b");
    const init = await cliJson<InitJson>(["site", "init", "--dir", dir, "--name", "site-b", "--ca-cert", join(caDir, "ca.crt"), "--listen", "127.0.0.1:0"]);
    expect(init.pendingCertificates.map((p) => p.role)).toEqual(["agent", "admin"]);
    // Nothing of the CA but its certificate on the site host; keys made here, 0600.
    const tlsFiles = readdirSync(join(dir, "tls")).sort();
    expect(tlsFiles).toEqual(["admin.csr", "admin.key", "ca.crt", "site-b.csr", "site-b.key"]);
    for (const f of tlsFiles) expect(statSync(join(dir, "tls", f)).mode & 0o077).toBe(0);
    expect(readFileSync(join(dir, "tls", "ca.crt"), "utf8")).toBe(readFileSync(join(caDir, "ca.crt"), "utf8"));

    const unsigned = await runCli(["site", "serve", "--dir", dir]);
    expect(unsigned.code).not.toBe(0);
    expect(unsigned.stderr).toContain(join(dir, "tls", "site-b.csr"));
    expect(unsigned.stderr).toContain("qreplica pki sign");

    // On the CA host: sign each request as printed (CA_DIR filled in).
    for (const p of init.pendingCertificates) {
      const args = p.signCommand
        .replace(/^qreplica /, "")
        .replace("CA_DIR", caDir)
        .split(" ");
      await cliJson(args);
      expect(existsSync(p.certFile)).toBe(true);
    }
    expect(certificateIdentity(readFileSync(init.certificate)).role).toBe("agent");
    expect(certificateIdentity(readFileSync(join(dir, "tls", "admin.crt"))).role).toBe("admin");

    const startedAt = Date.now();
    site = startDaemon(CLI, ["site", "serve", "--dir", dir], join(dir, "site.log"));
    await waitFor("site-b to listen", () => (existsSync(addressFile(dir)) && statSync(addressFile(dir)).mtimeMs >= startedAt - 5 ? true : undefined), 30_000);
    const status = await cliJson<{ siteId: string; relationships: unknown[] }>(["status", "--dir", dir]);
    expect(status.siteId).toBe("site-b");
    expect(status.relationships).toEqual([]);
  });

  it("refuses --ca-dir with --ca-cert, and a CA key given as the CA certificate, naming the fix", async () => {
    const both = await runCli(["site", "init", "--dir", join(tmp.path, "x"), "--name", "x", "--ca-dir", caDir, "--ca-cert", join(caDir, "ca.crt")]);
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/exactly one of --ca-dir .* or --ca-cert/);
    const key = await runCli(["site", "init", "--dir", join(tmp.path, "y"), "--name", "y", "--ca-cert", join(caDir, "ca.key")]);
    expect(key.code).toBe(2);
    expect(key.stderr).toContain("give the CA's ca.crt");
  });
});
