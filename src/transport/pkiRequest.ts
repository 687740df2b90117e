import { X509Certificate } from "node:crypto";
import { chmod, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { isIP } from "node:net";
import { dirname, join } from "node:path";
import { PkiFileExistsError, PkiInvalidNameError, TlsFileInvalidError } from "./errors.js";
import { checkIdentityName, generateKey, openssl, ROLE_URI_PREFIX, signRequestWithCa } from "./pki.js";
import { isRole, type Role } from "./roles.js";

// Issuance in two steps, so the CA's private key never has to be on a site or agent host: the
// host makes its key and a certificate signing request (`qreplica pki request`), the request
// travels to the CA host, which signs it (`qreplica pki sign`) with the role the CA's operator
// decides, and only the certificate travels back. The key never leaves the host that made it.

function sanEntries(sans: readonly string[]): string[] {
  return sans.map((san) => {
    if (isIP(san)) return `IP:${san}`;
    checkIdentityName(san);
    return `DNS:${san}`;
  });
}

/** On the site or agent host: `dir/FILE.key` (0600) and `dir/FILE.csr` asking for CN=name and the SANs; FILE is `fileName`, default the name. */
export async function createCertificateRequest(opts: {
  name: string;
  dir: string;
  sans?: readonly string[];
  fileName?: string;
  overwrite?: boolean;
}): Promise<{ keyFile: string; csrFile: string }> {
  checkIdentityName(opts.name);
  const fileName = opts.fileName ?? opts.name;
  checkIdentityName(fileName);
  const altNames = [...new Set([`DNS:${opts.name}`, ...sanEntries(opts.sans ?? [])])];
  await mkdir(opts.dir, { recursive: true, mode: 0o700 });
  const keyFile = join(opts.dir, `${fileName}.key`);
  const csrFile = join(opts.dir, `${fileName}.csr`);
  const configFile = join(opts.dir, `.${fileName}-${process.pid}.cnf`);
  await generateKey(keyFile, opts.overwrite ?? false);
  await writeFile(
    configFile,
    ["[req]", "prompt = no", "distinguished_name = dn", "req_extensions = ext", "[dn]", `CN = ${opts.name}`, "[ext]", `subjectAltName = ${altNames.join(",")}`, ""].join("\n"),
    { mode: 0o600 },
  );
  try {
    await writeFile(csrFile, "", { mode: 0o600 });
    await openssl(["req", "-new", "-config", configFile, "-key", keyFile, "-out", csrFile], `making a request for ${opts.name}`);
    await chmod(csrFile, 0o600);
  } catch (err) {
    await rm(keyFile, { force: true });
    await rm(csrFile, { force: true });
    throw err;
  } finally {
    await rm(configFile, { force: true });
  }
  return { keyFile, csrFile };
}

/** What a request asks for, read with openssl after checking its self-signature. */
export async function readCertificateRequest(csrFile: string): Promise<{ name: string; sans: string[] }> {
  const { stdout, stderr } = await openssl(["req", "-in", csrFile, "-noout", "-verify", "-text", "-nameopt", "multiline"], `reading the request ${csrFile}`);
  if (!/verify OK|Certificate request self-signature verify OK/i.test(stderr + stdout)) {
    throw new TlsFileInvalidError(`${csrFile}: the request's signature does not verify; make a new one with 'qreplica pki request'`);
  }
  const cn = /^\s*commonName\s*=\s*(.+)$/m.exec(stdout)?.[1]?.trim();
  if (!cn) throw new TlsFileInvalidError(`${csrFile} names no CN; make it with 'qreplica pki request --name NAME'`);
  const sanLine = /X509v3 Subject Alternative Name:\s*\n\s*(.+)\n/.exec(stdout)?.[1] ?? "";
  const sans: string[] = [];
  for (const entry of sanLine.split(/,\s*/).filter(Boolean)) {
    const m = /^(DNS|IP Address):(.+)$/.exec(entry.trim());
    // A role is the CA's decision (--role), never the requester's: any other kind of name is refused.
    if (!m) throw new PkiInvalidNameError(`${csrFile} asks for the name "${entry.trim()}"; a request may only ask for DNS names and IP addresses`);
    sans.push(m[2]!.trim());
  }
  return { name: cn, sans };
}

/**
 * On the CA host: signs a request with the CA in `caDir`, binding `role` (the CA operator's
 * choice, default agent). The certificate's names are the request's CN and SANs, checked as
 * `issueCertificate` checks them, plus `extraSans`.
 */
export async function signCertificateRequest(opts: {
  caDir: string;
  csrFile: string;
  out: string;
  role?: Role;
  days?: number;
  extraSans?: readonly string[];
  overwrite?: boolean;
}): Promise<{ certFile: string; name: string; sans: string[]; role: Role; serialNumber: string; notAfter: Date }> {
  const role = opts.role ?? "agent";
  if (!isRole(role)) throw new PkiInvalidNameError(`role "${String(role)}" is not one of agent, viewer, operator, admin`);
  const req = await readCertificateRequest(opts.csrFile);
  checkIdentityName(req.name);
  const sans = [...new Set([...req.sans, ...(opts.extraSans ?? [])])];
  const altNames = [...new Set([`DNS:${req.name}`, ...sanEntries(sans), `URI:${ROLE_URI_PREFIX}${role}`])];
  if (!opts.overwrite) {
    const exists = await readFile(opts.out).then(
      () => true,
      () => false,
    );
    if (exists) throw new PkiFileExistsError(`${opts.out} already exists; remove it or pass --overwrite to replace it`);
  }
  await mkdir(dirname(opts.out), { recursive: true, mode: 0o700 });
  const configFile = join(dirname(opts.out), `.sign-${process.pid}.cnf`);
  await writeFile(
    configFile,
    [
      "[ext]",
      "basicConstraints = critical,CA:FALSE",
      "keyUsage = critical,digitalSignature",
      "extendedKeyUsage = serverAuth,clientAuth",
      `subjectAltName = ${altNames.join(",")}`,
      "subjectKeyIdentifier = hash",
      "authorityKeyIdentifier = keyid,issuer",
      "",
    ].join("\n"),
    { mode: 0o600 },
  );
  try {
    await writeFile(opts.out, "", { mode: 0o600 });
    await signRequestWithCa({
      caDir: opts.caDir,
      csrFile: opts.csrFile,
      extFile: configFile,
      out: opts.out,
      days: opts.days,
      what: `signing ${opts.csrFile} with the CA in ${opts.caDir} (it needs ca.key and ca.crt there)`,
    });
    await chmod(opts.out, 0o600);
  } catch (err) {
    await rm(opts.out, { force: true });
    throw err;
  } finally {
    await rm(configFile, { force: true });
  }
  const cert = new X509Certificate(await readFile(opts.out));
  return { certFile: opts.out, name: req.name, sans, role, serialNumber: cert.serialNumber, notAfter: new Date(cert.validTo) };
}
