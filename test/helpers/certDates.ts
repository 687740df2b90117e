/**
 * Certificates of the deployment CA with chosen validity dates (expired, not yet valid), which
 * `issueCertificate` cannot make (it only takes a number of days from now). `openssl ca` takes
 * -startdate/-enddate; its bookkeeping files live in a throwaway directory.
 */
import { execFile } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { ROLE_URI_PREFIX, type Role } from "../../src/transport/index.js";
import type { CredentialFiles } from "./controlPlane.js";

const run = promisify(execFile);

/** openssl's time format: YYYYMMDDHHMMSSZ. */
function asn1Time(d: Date): string {
  return `${d.toISOString().replace(/[-:T]/g, "").slice(0, 14)}Z`;
}

export async function issueWithDates(o: { caDir: string; name: string; role: Role | null; dir: string; notBefore: Date; notAfter: Date }): Promise<CredentialFiles> {
  const dir = join(o.dir, o.name);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, "index.txt"), "");
  writeFileSync(join(dir, "serial"), "1000\n");
  const keyFile = join(dir, `${o.name}.key`);
  const certFile = join(dir, `${o.name}.crt`);
  const csr = join(dir, `${o.name}.csr`);
  const cnf = join(dir, "ca.cnf");
  const sans = [`DNS:${o.name}`, "DNS:localhost", ...(o.role ? [`URI:${ROLE_URI_PREFIX}${o.role}`] : [])];
  writeFileSync(
    cnf,
    [
      "[ca]",
      "default_ca = fz",
      "[fz]",
      `database = ${join(dir, "index.txt")}`,
      `new_certs_dir = ${dir}`,
      `serial = ${join(dir, "serial")}`,
      "default_md = sha256",
      "policy = pol",
      "unique_subject = no",
      "[pol]",
      "commonName = supplied",
      "[req]",
      "prompt = no",
      "distinguished_name = dn",
      "[dn]",
      `CN = ${o.name}`,
      "[ext]",
      "basicConstraints = critical,CA:FALSE",
      "keyUsage = critical,digitalSignature",
      "extendedKeyUsage = serverAuth,clientAuth",
      `subjectAltName = ${sans.join(",")}`,
      "",
    ].join("\n"),
  );
  await run("openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", keyFile]);
  await run("openssl", ["req", "-new", "-config", cnf, "-key", keyFile, "-out", csr]);
  await run("openssl", [
    "ca",
    "-batch",
    "-notext",
    "-config",
    cnf,
    "-cert",
    join(o.caDir, "ca.crt"),
    "-keyfile",
    join(o.caDir, "ca.key"),
    "-in",
    csr,
    "-out",
    certFile,
    "-startdate",
    asn1Time(o.notBefore),
    "-enddate",
    asn1Time(o.notAfter),
    "-extfile",
    cnf,
    "-extensions",
    "ext",
  ]);
  return { caFile: join(o.caDir, "ca.crt"), certFile, keyFile };
}
