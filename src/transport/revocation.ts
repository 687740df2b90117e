import { spawnSync } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { chmod, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { silentLogger, type Logger } from "../common/logger.js";
import { errorMessage } from "../common/errors.js";
import { CertificateRevokedError, CrlInvalidError, TlsCertificateNotFromCaError, TlsFileInvalidError } from "./errors.js";
import { normalizeSerial, openssl } from "./pki.js";

// Revocation with the openssl CLI's own CA database: `CA_DIR/index.txt` lists what was revoked
// (the format `openssl ca` reads and writes, so an operator can inspect it with the same tool) and
// `CA_DIR/crl.pem` is the list signed by the CA that sites load. Only revoked certificates are in
// the index: issuance keeps no database (serials are random), so nothing else needs it.

export const CRL_FILE_NAME = "crl.pem";
const INDEX = "index.txt";
/** A CRL is valid this long unless told otherwise: re-run `qreplica pki crl` before it runs out. */
const DEFAULT_CRL_DAYS = 30;

/** openssl's index date: YYMMDDHHMMSSZ (UTC). */
function indexDate(d: Date): string {
  return d.toISOString().replace(/[-:T]/g, "").slice(2, 14) + "Z";
}

export interface RevokedEntry {
  serialNumber: string;
  commonName: string;
  revokedAt: Date;
}

async function readIndex(caDir: string): Promise<string> {
  try {
    return await readFile(join(caDir, INDEX), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return "";
    throw err;
  }
}

/** What the CA's index lists as revoked. */
export async function revokedEntries(caDir: string): Promise<RevokedEntry[]> {
  const out: RevokedEntry[] = [];
  for (const line of (await readIndex(caDir)).split("\n")) {
    const f = line.split("\t");
    if (f[0] !== "R" || f.length < 6) continue;
    const d = /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z/.exec(f[2]!);
    const revokedAt = d ? new Date(`20${d[1]}-${d[2]}-${d[3]}T${d[4]}:${d[5]}:${d[6]}Z`) : new Date(0);
    out.push({ serialNumber: normalizeSerial(f[3]!), commonName: (/CN=([^/]*)/.exec(f[5]!) ?? [])[1] ?? "", revokedAt });
  }
  return out;
}

/**
 * Writes `CA_DIR/crl.pem` from the CA's index, signed with `CA_DIR/ca.key` (the CA host's job).
 * Copy it to every site's `crlFile`; sites re-read it when it changes.
 */
export async function generateCrl(opts: { caDir: string; days?: number }): Promise<{ crlFile: string; revoked: RevokedEntry[]; nextUpdate: Date }> {
  const { caDir } = opts;
  const days = opts.days ?? DEFAULT_CRL_DAYS;
  const indexFile = join(caDir, INDEX);
  await writeFile(indexFile, await readIndex(caDir), { mode: 0o600 });
  await chmod(indexFile, 0o600);
  const config = join(caDir, `.crl-${process.pid}.cnf`);
  const crlFile = join(caDir, CRL_FILE_NAME);
  await writeFile(
    config,
    [
      "[ca]",
      "default_ca = qreplica",
      "[qreplica]",
      `database = ${indexFile}`,
      `certificate = ${join(caDir, "ca.crt")}`,
      `private_key = ${join(caDir, "ca.key")}`,
      "default_md = sha256",
      `default_crl_days = ${days}`,
      "crl_extensions = crl_ext",
      "[crl_ext]",
      "authorityKeyIdentifier = keyid:always",
      "",
    ].join("\n"),
    { mode: 0o600 },
  );
  const tmp = `${crlFile}.${process.pid}.tmp`;
  try {
    await writeFile(tmp, "", { mode: 0o600 });
    await openssl(["ca", "-gencrl", "-batch", "-config", config, "-out", tmp], `writing the revocation list of the CA in ${caDir} (it needs ca.key and ca.crt there)`);
    await chmod(tmp, 0o600);
    await rename(tmp, crlFile);
  } finally {
    await rm(config, { force: true });
    await rm(tmp, { force: true });
  }
  return { crlFile, revoked: await revokedEntries(caDir), nextUpdate: new Date(Date.now() + days * 24 * 3600 * 1000) };
}

/**
 * Revokes a certificate of this CA (given as its file, or by serial with its CN unknown), then
 * writes a new CRL. Revoking a serial twice keeps the first entry.
 */
export async function revokeCertificate(opts: {
  caDir: string;
  certFile?: string;
  serial?: string;
  reason?: "keyCompromise" | "superseded" | "cessationOfOperation" | "unspecified";
  days?: number;
}): Promise<{ crlFile: string; revoked: RevokedEntry[]; serialNumber: string; alreadyRevoked: boolean }> {
  let serial: string;
  let subject = "/CN=unknown";
  let expiry = new Date(Date.now() + 3650 * 24 * 3600 * 1000);
  if (opts.certFile) {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(await readFile(opts.certFile));
    } catch (err) {
      throw new TlsFileInvalidError(`${opts.certFile} is not a certificate (${errorMessage(err)}); pass the .crt file, or --serial`, { cause: err });
    }
    const ca = new X509Certificate(await readFile(join(opts.caDir, "ca.crt")));
    if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) {
      throw new TlsCertificateNotFromCaError(`${opts.certFile} was not issued by the CA in ${opts.caDir}; revoke it with the CA that issued it`);
    }
    serial = normalizeSerial(cert.serialNumber);
    subject = `/${cert.subject.split("\n").join("/")}`;
    expiry = new Date(cert.validTo);
  } else if (opts.serial && /^(0x)?[0-9a-f:]+$/i.test(opts.serial)) {
    serial = normalizeSerial(opts.serial);
  } else {
    throw new TlsFileInvalidError(`give the certificate to revoke (--cert FILE) or its serial in hex (--serial), not "${opts.serial ?? ""}"`);
  }
  const already = (await revokedEntries(opts.caDir)).some((e) => e.serialNumber === serial);
  if (!already) {
    // openssl wants an even number of hex digits in its index.
    const hex = serial.length % 2 ? `0${serial}` : serial;
    const line = ["R", indexDate(expiry), `${indexDate(new Date())},${opts.reason ?? "unspecified"}`, hex, "unknown", subject.replace(/\t/g, " ")].join("\t");
    const indexFile = join(opts.caDir, INDEX);
    await writeFile(indexFile, (await readIndex(opts.caDir)) + line + "\n", { mode: 0o600 });
  }
  const crl = await generateCrl({ caDir: opts.caDir, ...(opts.days !== undefined ? { days: opts.days } : {}) });
  return { crlFile: crl.crlFile, revoked: crl.revoked, serialNumber: serial, alreadyRevoked: already };
}

export interface LoadedCrl {
  serials: ReadonlySet<string>;
  nextUpdate: Date | undefined;
}

/** Reads a CRL and checks it is signed by the CA in `caFile`: a list anyone could write would let them unrevoke. */
export async function loadCrl(crlFile: string, caFile: string): Promise<LoadedCrl> {
  let out: { stdout: string; stderr: string };
  try {
    out = await openssl(crlTextArgs(crlFile, caFile), `reading the revocation list ${crlFile}`);
  } catch (err) {
    throw unreadableCrl(crlFile, err);
  }
  return parseCrlText(crlFile, caFile, out);
}

/**
 * loadCrl for a short-lived process that reads the list once before it dials (the CLI, whose
 * site clients are made synchronously): the same checks, with openssl run to completion.
 */
export function loadCrlNow(crlFile: string, caFile: string): LoadedCrl {
  const r = spawnSync("openssl", crlTextArgs(crlFile, caFile), { encoding: "utf8", timeout: 60_000 });
  if (r.error || r.status !== 0) throw unreadableCrl(crlFile, r.error ?? new Error((r.stderr || `openssl exited with ${r.status}`).trim()));
  return parseCrlText(crlFile, caFile, { stdout: r.stdout, stderr: r.stderr });
}

const crlTextArgs = (crlFile: string, caFile: string) => ["crl", "-in", crlFile, "-CAfile", caFile, "-text", "-noout"];

const unreadableCrl = (crlFile: string, err: unknown) =>
  new CrlInvalidError(`revocation list ${crlFile} cannot be read: ${errorMessage(err)}; copy the CA's crl.pem there ('qreplica pki crl')`, { cause: err });

function parseCrlText(crlFile: string, caFile: string, out: { stdout: string; stderr: string }): LoadedCrl {
  // openssl 3.0 exits 0 on a bad signature and only prints "verify failure".
  if (!/^verify OK$/m.test(out.stderr + "\n" + out.stdout)) {
    throw new CrlInvalidError(`revocation list ${crlFile} is not signed by the CA in ${caFile}; use the crl.pem that CA wrote ('qreplica pki crl --ca-dir ...')`);
  }
  const serials = new Set([...out.stdout.matchAll(/Serial Number: ([0-9A-Fa-f]+)/g)].map((m) => normalizeSerial(m[1]!)));
  const next = /Next Update: (.+)$/m.exec(out.stdout);
  return { serials, nextUpdate: next ? new Date(next[1]!) : undefined };
}

/** Why a certificate on `crl` may not be used: a message naming it, the list and the fix. */
function revokedRefusal(crl: LoadedCrl, crlFile: string, cert: { commonName: string; serialNumber: string }): string | undefined {
  if (!crl.serials.has(normalizeSerial(cert.serialNumber))) return undefined;
  return (
    `the certificate of '${cert.commonName}' (serial ${cert.serialNumber}) is revoked by the deployment CA (revocation list ${crlFile}); ` +
    `issue '${cert.commonName}' a new certificate ('qreplica pki request' on its host, 'qreplica pki sign' on the CA host)`
  );
}

/** A revocation list read once (the CLI's): for a process that ends before the list could change. */
export class FixedRevocationList {
  private constructor(
    readonly crlFile: string,
    private readonly crl: LoadedCrl,
  ) {}

  static load(crlFile: string, caFile: string): FixedRevocationList {
    return new FixedRevocationList(crlFile, loadCrlNow(crlFile, caFile));
  }

  refusal(cert: { commonName: string; serialNumber: string }): string | undefined {
    return revokedRefusal(this.crl, this.crlFile, cert);
  }
}

/**
 * A site's view of the CRL in its `crlFile`, read at start and again whenever the file changes
 * (checked every `pollMs`), so a revocation takes effect without a restart. A replacement that
 * does not load keeps the previous list (and is logged): a broken copy must not unrevoke anyone.
 */
export class RevocationList {
  private current: LoadedCrl;
  private seen: string;
  private timer: NodeJS.Timeout | undefined;
  private checking = false;
  private readonly reloadListeners: Array<() => void> = [];

  private constructor(
    readonly crlFile: string,
    private readonly caFile: string,
    private readonly logger: Logger,
    loaded: LoadedCrl,
    seen: string,
  ) {
    this.current = loaded;
    this.seen = seen;
  }

  static async open(crlFile: string, caFile: string, options: { logger?: Logger; pollMs?: number } = {}): Promise<RevocationList> {
    const logger = options.logger ?? silentLogger;
    const seen = await fileStamp(crlFile);
    const list = new RevocationList(crlFile, caFile, logger, await loadCrl(crlFile, caFile), seen);
    list.logLoaded();
    list.timer = setInterval(() => void list.check(), options.pollMs ?? 2_000);
    list.timer.unref();
    return list;
  }

  /** Why `cert` may not be used (a message naming it and the fix), or undefined. */
  refusal(cert: { commonName: string; serialNumber: string }): string | undefined {
    return revokedRefusal(this.current, this.crlFile, cert);
  }

  assertNotRevoked(cert: { commonName: string; serialNumber: string }): void {
    const r = this.refusal(cert);
    if (r) throw new CertificateRevokedError(r);
  }

  /** Called after each new list is taken (not for one that failed to load). */
  onReload(listener: () => void): void {
    this.reloadListeners.push(listener);
  }

  get size(): number {
    return this.current.serials.size;
  }

  close(): void {
    clearInterval(this.timer);
  }

  /** Reads the file again if it changed; resolves once done (tests and the poller). */
  async check(): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    try {
      const stamp = await fileStamp(this.crlFile).catch((err: unknown) => `missing: ${errorMessage(err)}`);
      if (stamp === this.seen) return;
      try {
        this.current = await loadCrl(this.crlFile, this.caFile);
        this.seen = stamp;
        this.logLoaded();
        for (const listener of this.reloadListeners) listener();
      } catch (err) {
        this.seen = stamp;
        this.logger.error({ err, crlFile: this.crlFile }, "the new revocation list does not load; the site keeps the previous one");
      }
    } finally {
      this.checking = false;
    }
  }

  private logLoaded(): void {
    const { serials, nextUpdate } = this.current;
    this.logger.info({ crlFile: this.crlFile, revoked: serials.size, nextUpdate }, "revocation list loaded");
    if (nextUpdate && nextUpdate.getTime() < Date.now()) {
      this.logger.warn(
        { crlFile: this.crlFile, nextUpdate },
        "the revocation list is past its next update; write a fresh one on the CA host ('qreplica pki crl') and copy it here",
      );
    }
  }
}

/** The content, not the mtime: a copy of the same size within one clock tick is still seen. */
async function fileStamp(file: string): Promise<string> {
  return createHash("sha256")
    .update(await readFile(file))
    .digest("hex");
}
