import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROLES, ROLE_URI_PREFIX, certificateIdentity, createCa, issueCertificate, roleAllows, type CaFiles } from "../../../src/transport/index.js";
import { runCli } from "../../helpers/processes.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const tmp = makeTmpDir("qr-roles-pki-");
let ca: CaFiles;

beforeAll(async () => {
  ca = await createCa({ dir: join(tmp.path, "ca"), name: "roles CA", days: 30 });
});
afterAll(() => tmp.cleanup());

describe("roles bound into certificates at issuance", () => {
  it("each role is a signed URI SAN that certificateIdentity reads back; the URI is not among the SANs peers dial", async () => {
    for (const role of ROLES) {
      const files = await issueCertificate({ caDir: ca.dir, name: `p-${role}`, dir: join(tmp.path, role), sans: ["localhost"], role, days: 2 });
      const id = certificateIdentity(readFileSync(files.certFile));
      expect(id.role).toBe(role);
      expect(id.sans).toEqual([`p-${role}`, "localhost"]);
      const text = execFileSync("openssl", ["x509", "-in", files.certFile, "-noout", "-ext", "subjectAltName"], { encoding: "utf8" });
      expect(text).toContain(`URI:${ROLE_URI_PREFIX}${role}`);
    }
  });

  it("the default is agent, the least privilege; role null issues a certificate without a role", async () => {
    const dflt = await issueCertificate({ caDir: ca.dir, name: "plain", dir: join(tmp.path, "plain"), days: 2 });
    expect(certificateIdentity(readFileSync(dflt.certFile)).role).toBe("agent");
    const none = await issueCertificate({ caDir: ca.dir, name: "legacy", dir: join(tmp.path, "legacy"), role: null, days: 2 });
    expect(certificateIdentity(readFileSync(none.certFile)).role).toBeUndefined();
  });

  it("fileName names the files, the CN stays the identity", async () => {
    const f = await issueCertificate({ caDir: ca.dir, name: "site-x-admin", dir: join(tmp.path, "sx"), role: "admin", fileName: "admin", days: 2 });
    expect(f.certFile).toBe(join(tmp.path, "sx", "admin.crt"));
    expect(certificateIdentity(readFileSync(f.certFile)).commonName).toBe("site-x-admin");
  });

  it("agents hold no control role; viewer < operator < admin", () => {
    expect(roleAllows("agent", "viewer")).toBe(false);
    expect(roleAllows("viewer", "viewer")).toBe(true);
    expect(roleAllows("viewer", "operator")).toBe(false);
    expect(roleAllows("operator", "operator")).toBe(true);
    expect(roleAllows("operator", "admin")).toBe(false);
    expect(roleAllows("admin", "operator")).toBe(true);
  });

  it("qreplica pki issue --role: defaults to agent, says so in --help, refuses an unknown role", async () => {
    const help = await runCli(["pki", "issue", "--help"]);
    expect(help.stdout).toMatch(/Defaults to agent/);
    const op = await runCli(["pki", "issue", "--ca-dir", ca.dir, "--name", "alice", "--out-dir", join(tmp.path, "cli"), "--role", "operator", "--json"]);
    expect(op.code).toBe(0);
    expect(JSON.parse(op.stdout).role).toBe("operator");
    expect(certificateIdentity(readFileSync(join(tmp.path, "cli", "alice.crt"))).role).toBe("operator");
    const dflt = await runCli(["pki", "issue", "--ca-dir", ca.dir, "--name", "bob", "--out-dir", join(tmp.path, "cli")]);
    expect(dflt.code).toBe(0);
    expect(certificateIdentity(readFileSync(join(tmp.path, "cli", "bob.crt"))).role).toBe("agent");
    const bad = await runCli(["pki", "issue", "--ca-dir", ca.dir, "--name", "eve", "--out-dir", join(tmp.path, "cli"), "--role", "root"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--role root: expected one of agent, viewer, operator, admin");
  });
});
