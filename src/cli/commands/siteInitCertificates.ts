import { X509Certificate } from "node:crypto";
import { chmodSync, copyFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ADMIN_CERT_NAME } from "../../site/siteConfig.js";
import { createCertificateRequest, issueCertificate } from "../../transport/index.js";
import { InvalidCliArgumentError } from "../exitCodes.js";

/** A certificate `site init` asked for and the CA host has still to sign. */
export interface PendingCertificate {
  csrFile: string;
  role: "agent" | "admin";
  /** Where the signed certificate goes. */
  certFile: string;
  signCommand: string;
}

export interface SiteCertificates {
  /** Issued now (with --ca-dir) or awaited (with --ca-cert). */
  certFile: string;
  pending: PendingCertificate[];
}

/**
 * The site's identity (role agent: it serves and runs reverse agents, and must not be able to fail
 * anything over if its key leaks from the data plane) and the local admin (what the CLI presents
 * with --dir). With the CA directory both are issued at once; with only the CA's certificate the
 * keys are made here and their requests wait for `qreplica pki sign` on the CA host, so the CA's
 * private key never has to be on a site host.
 */
export async function makeSiteCertificates(opts: { name: string; tlsDir: string; sans: string[]; caDir?: string; caCert?: string }): Promise<SiteCertificates> {
  if (Boolean(opts.caDir) === Boolean(opts.caCert)) {
    throw new InvalidCliArgumentError(
      "give exactly one of --ca-dir (the CA directory, key included: certificates are issued now) or --ca-cert (only the CA's ca.crt: requests are made for 'qreplica pki sign' on the CA host)",
    );
  }
  const adminName = `${opts.name}-admin`;
  if (opts.caDir) {
    const issued = await issueCertificate({ caDir: opts.caDir, name: opts.name, dir: opts.tlsDir, sans: opts.sans, role: "agent" });
    await issueCertificate({ caDir: opts.caDir, name: adminName, dir: opts.tlsDir, role: "admin", fileName: ADMIN_CERT_NAME });
    installCaCertificate(join(opts.caDir, "ca.crt"), opts.tlsDir);
    return { certFile: issued.certFile, pending: [] };
  }
  installCaCertificate(opts.caCert!, opts.tlsDir);
  const site = await createCertificateRequest({ name: opts.name, dir: opts.tlsDir, sans: opts.sans });
  const admin = await createCertificateRequest({ name: adminName, dir: opts.tlsDir, fileName: ADMIN_CERT_NAME });
  const pending = (csrFile: string, role: "agent" | "admin", certFile: string): PendingCertificate => ({
    csrFile,
    role,
    certFile,
    signCommand: `qreplica pki sign --ca-dir CA_DIR --csr ${csrFile} --role ${role} --out ${certFile}`,
  });
  return {
    certFile: join(opts.tlsDir, `${opts.name}.crt`),
    pending: [pending(site.csrFile, "agent", join(opts.tlsDir, `${opts.name}.crt`)), pending(admin.csrFile, "admin", join(opts.tlsDir, `${ADMIN_CERT_NAME}.crt`))],
  };
}

function installCaCertificate(caCert: string, tlsDir: string): void {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(readFileSync(caCert));
  } catch (err) {
    throw new InvalidCliArgumentError(`${caCert} is not a PEM certificate: give the CA's ca.crt (never its key)`, { cause: err });
  }
  if (!cert.ca) throw new InvalidCliArgumentError(`${caCert} is not a CA certificate (${cert.subject.replace(/\n/g, ", ")}): give the CA's ca.crt`);
  copyFileSync(caCert, join(tlsDir, "ca.crt"));
  chmodSync(join(tlsDir, "ca.crt"), 0o600); // a copy keeps its source's mode
}
