import { execFile } from "node:child_process";
import { randomBytes, X509Certificate } from "node:crypto";
import { chmod, mkdir, open, rm, writeFile } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { OpensslError, PkiFileExistsError, PkiInvalidNameError, TlsFileInvalidError } from "./errors.js";
import { isRole, type Role } from "./roles.js";

// A small private CA per deployment, made with the openssl CLI rather than a JS X.509 library:
// the operator can inspect and reproduce every step with the same tool. P-256 keys, because they
// are generated instantly and every TLS stack accepts them.

const run = promisify(execFile);

/** Runs openssl; resolves with what it printed (stdout, stderr). */
export async function openssl(args: string[], what: string): Promise<{ stdout: string; stderr: string }> {
  try {
    // No shell: arguments go straight to openssl, so names cannot inject anything.
    return await run("openssl", args, { timeout: 60_000, maxBuffer: 64 * 1024 * 1024 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === "ENOENT") {
      throw new OpensslError(`${what}: the openssl command is not installed; install it (e.g. apt-get install openssl)`, { cause: err });
    }
    throw new OpensslError(`${what}: openssl ${args[0]} failed: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
}

const DNS_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
const DNS_NAME = new RegExp(`^${DNS_LABEL}(?:\\.${DNS_LABEL})*$`);
const CA_NAME = /^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$/;

export function checkIdentityName(name: string): void {
  if (name.length > 253 || !DNS_NAME.test(name)) {
    throw new PkiInvalidNameError(
      `"${name}" cannot be a site or agent identity: it is used as the certificate CN and a DNS name, ` +
        `so use letters, digits, '-' and '.' (e.g. "site-a" or "kvm1.dc1.example")`,
    );
  }
}

/** Creates `file` empty with mode 0600 before openssl writes the key into it, so it is never readable by others. */
async function reserveKeyFile(file: string, overwrite: boolean): Promise<void> {
  if (overwrite) await rm(file, { force: true });
  try {
    await (await open(file, "wx", 0o600)).close();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") {
      throw new PkiFileExistsError(`${file} already exists; remove it or pass overwrite: true to replace it (and the certificate made from it)`, {
        cause: err,
      });
    }
    throw err;
  }
}

export async function generateKey(file: string, overwrite: boolean): Promise<void> {
  await reserveKeyFile(file, overwrite);
  await openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", file], `generating ${file}`);
  await chmod(file, 0o600);
}

/** Positive 127-bit serial: unique without keeping a serial file next to the CA. */
export function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f;
  return `0x${b.toString("hex")}`;
}

export interface CaFiles {
  dir: string;
  keyFile: string;
  certFile: string;
}

/**
 * A CA for one deployment: `dir/ca.key` (0600; keep it off the sites if you can) and `dir/ca.crt`,
 * which every site and agent trusts.
 */
export async function createCa(opts: { dir: string; name: string; days?: number; overwrite?: boolean }): Promise<CaFiles> {
  if (!CA_NAME.test(opts.name)) {
    throw new PkiInvalidNameError(`CA name "${opts.name}" must be 1-64 letters, digits, spaces, '.', '_' or '-'`);
  }
  await mkdir(opts.dir, { recursive: true, mode: 0o700 });
  const keyFile = join(opts.dir, "ca.key");
  const certFile = join(opts.dir, "ca.crt");
  const configFile = join(opts.dir, `.ca-${process.pid}.cnf`);
  await generateKey(keyFile, opts.overwrite ?? false);
  // An explicit config rather than the distribution's openssl.cnf, whose defaults vary.
  await writeFile(
    configFile,
    [
      "[req]",
      "prompt = no",
      "distinguished_name = dn",
      "x509_extensions = ext",
      "[dn]",
      `CN = ${opts.name}`,
      "[ext]",
      "basicConstraints = critical,CA:TRUE,pathlen:0",
      "keyUsage = critical,keyCertSign,cRLSign",
      "subjectKeyIdentifier = hash",
      "",
    ].join("\n"),
  );
  try {
    await openssl(
      ["req", "-x509", "-new", "-config", configFile, "-key", keyFile, "-sha256", "-days", String(opts.days ?? 3650), "-set_serial", randomSerial(), "-out", certFile],
      `creating CA certificate ${certFile}`,
    );
  } finally {
    await rm(configFile, { force: true });
  }
  return { dir: opts.dir, keyFile, certFile };
}

export interface IssuedFiles {
  keyFile: string;
  certFile: string;
  /** The issuing CA's certificate, which the peer needs as its trust anchor. */
  caFile: string;
}

/**
 * The role is bound into the certificate as a URI subject alternative name
 * `urn:qreplica:role:<role>` rather than as a subject OU: a URI in our own namespace cannot be
 * confused with an organisational unit some other issuer puts in its subjects, and the CA's
 * signature covers it like the CN. Exactly one such URI gives the role; none (a certificate issued
 * before roles existed) or several give no control-plane rights at all.
 */
export const ROLE_URI_PREFIX = "urn:qreplica:role:";

/**
 * A key and certificate for a site or agent, signed by the CA in `caDir`. `name` is the identity:
 * the CN (what authorization entries match) and the first DNS SAN. `sans` adds the names and IPs
 * peers dial, since clients verify the server's address against them. Usable as both TLS server
 * and client, because every site is both. `role` (default `agent`, the least privilege) decides
 * what the identity may do on a site's control plane; `null` issues a certificate without any
 * role (only tests want that). `fileName` names the files (default: `name`).
 */
export async function issueCertificate(opts: {
  caDir: string;
  name: string;
  dir: string;
  sans?: readonly string[];
  role?: Role | null;
  fileName?: string;
  days?: number;
  overwrite?: boolean;
}): Promise<IssuedFiles> {
  checkIdentityName(opts.name);
  const role = opts.role === undefined ? "agent" : opts.role;
  if (role !== null && !isRole(role)) throw new PkiInvalidNameError(`role "${String(role)}" is not one of agent, viewer, operator, admin`);
  const altNames = [`DNS:${opts.name}`];
  for (const san of opts.sans ?? []) {
    if (isIP(san)) altNames.push(`IP:${san}`);
    else {
      checkIdentityName(san);
      altNames.push(`DNS:${san}`);
    }
  }
  if (role !== null) altNames.push(`URI:${ROLE_URI_PREFIX}${role}`);
  const fileName = opts.fileName ?? opts.name;
  checkIdentityName(fileName);
  const caCert = join(opts.caDir, "ca.crt");
  await mkdir(opts.dir, { recursive: true, mode: 0o700 });
  const keyFile = join(opts.dir, `${fileName}.key`);
  const certFile = join(opts.dir, `${fileName}.crt`);
  const csrFile = join(opts.dir, `.${fileName}-${process.pid}.csr`);
  const configFile = join(opts.dir, `.${fileName}-${process.pid}.cnf`);
  await generateKey(keyFile, opts.overwrite ?? false);
  await writeFile(
    configFile,
    [
      "[req]",
      "prompt = no",
      "distinguished_name = dn",
      "[dn]",
      `CN = ${opts.name}`,
      "[ext]",
      "basicConstraints = critical,CA:FALSE",
      "keyUsage = critical,digitalSignature",
      "extendedKeyUsage = serverAuth,clientAuth",
      `subjectAltName = ${[...new Set(altNames)].join(",")}`,
      "subjectKeyIdentifier = hash",
      "authorityKeyIdentifier = keyid,issuer",
      "",
    ].join("\n"),
  );
  try {
    await openssl(["req", "-new", "-config", configFile, "-key", keyFile, "-out", csrFile], `making a request for ${opts.name}`);
    await signRequestWithCa({
      caDir: opts.caDir,
      csrFile,
      extFile: configFile,
      out: certFile,
      days: opts.days,
      what: `signing ${certFile} with the CA in ${opts.caDir} (run createCa there first if it has no ca.key/ca.crt)`,
    });
  } catch (err) {
    // A key without its certificate would block the retry with PKI_FILE_EXISTS.
    await rm(keyFile, { force: true });
    throw err;
  } finally {
    await rm(csrFile, { force: true });
    await rm(configFile, { force: true });
  }
  return { keyFile, certFile, caFile: caCert };
}

/** `openssl x509 -req`: the CA in `caDir` signs `csrFile` with the `[ext]` section of `extFile`. */
export async function signRequestWithCa(opts: { caDir: string; csrFile: string; extFile: string; out: string; days?: number; what: string }): Promise<void> {
  await openssl(
    [
      "x509",
      "-req",
      "-in",
      opts.csrFile,
      "-CA",
      join(opts.caDir, "ca.crt"),
      "-CAkey",
      join(opts.caDir, "ca.key"),
      "-set_serial",
      randomSerial(),
      "-days",
      String(opts.days ?? 825),
      "-sha256",
      "-extfile",
      opts.extFile,
      "-extensions",
      "ext",
      "-out",
      opts.out,
    ],
    opts.what,
  );
}

export interface CertificateIdentity {
  commonName: string;
  /** DNS names and IP addresses, without their "DNS:" / "IP Address:" prefixes. */
  sans: string[];
  /** The control-plane role bound at issuance; absent when the certificate carries none (or several). */
  role?: Role;
  /** Upper-case hex without leading zeros, as a CRL lists it (`openssl crl -text`). */
  serialNumber: string;
  /** Colon-separated upper-case hex, as `openssl x509 -noout -fingerprint -sha256` prints it. */
  fingerprintSha256: string;
  notAfter: Date;
  issuer: string;
}

/** Who a certificate says it is. `source` names the file in errors. */
export function certificateIdentity(pem: string | Buffer | X509Certificate, source = "certificate"): CertificateIdentity {
  let cert: X509Certificate;
  try {
    cert = pem instanceof X509Certificate ? pem : new X509Certificate(pem);
  } catch (err) {
    throw new TlsFileInvalidError(`${source} is not a PEM or DER X.509 certificate; check that the path names the .crt file`, { cause: err });
  }
  const cn = cert.subject.split("\n").find((l) => l.startsWith("CN="));
  const entries = parseSubjectAltName(cert.subjectAltName);
  const roles = entries.filter((e) => e.startsWith(ROLE_URI_PREFIX)).map((e) => e.slice(ROLE_URI_PREFIX.length));
  const role = roles.length === 1 && isRole(roles[0]) ? roles[0] : undefined;
  return {
    commonName: cn ? cn.slice(3) : "",
    sans: entries.filter((e) => !e.startsWith(ROLE_URI_PREFIX)),
    ...(role ? { role } : {}),
    serialNumber: normalizeSerial(cert.serialNumber),
    fingerprintSha256: cert.fingerprint256,
    notAfter: new Date(cert.validTo),
    issuer: cert.issuer.replace(/\n/g, ", "),
  };
}

function parseSubjectAltName(s: string | undefined): string[] {
  if (!s) return [];
  return s.split(/, (?=[A-Za-z ]+:)/).map((entry) => entry.slice(entry.indexOf(":") + 1).replace(/^"(.*)"$/, "$1"));
}

/** One spelling of a serial whatever printed it: upper-case hex, no "0x", colons or leading zeros. */
export function normalizeSerial(serial: string): string {
  const hex = serial
    .replace(/^0x/i, "")
    .replace(/:/g, "")
    .toUpperCase()
    .replace(/^0+(?=.)/, "");
  return hex;
}
