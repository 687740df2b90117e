import { createPrivateKey, X509Certificate, type KeyObject } from "node:crypto";
import { existsSync, readFileSync, statSync } from "node:fs";
import { isIP } from "node:net";
import { basename } from "node:path";
import { checkServerIdentity, type PeerCertificate } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { silentLogger, type Logger } from "../common/logger.js";
import { CLIENT_RECEIVE_WINDOW_BYTES } from "./flowControl.js";
import { certificateIdentity, type CertificateIdentity } from "./pki.js";
import {
  TlsCertificateNotFromCaError,
  TlsCertificateNotValidNowError,
  TlsFileInvalidError,
  TlsFileMissingError,
  TlsFileUnreadableError,
  TlsKeyMismatchError,
  UnauthenticatedPeerError,
} from "./errors.js";

export interface SiteCredentialFiles {
  /** The deployment CA's certificate(s): the only issuer whose peers are let in. */
  caFile: string;
  /** This site's (or agent's) certificate; its CN is the identity peers authorize. */
  certFile: string;
  keyFile: string;
}

export interface SiteCredentials {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** This side's own identity, from `cert`. */
  identity: CertificateIdentity;
  /** Where they were read from, so a client can read renewed files again at its next dial (currentCredentials). */
  files?: SiteCredentialFiles;
  /** A client's revocation list: a server whose certificate it lists is refused at the handshake. */
  revocations?: RevocationCheck;
}

/** What a client asks of the deployment CA's revocation list (RevocationList in revocation.ts). */
export interface RevocationCheck {
  refusal(cert: { commonName: string; serialNumber: string }): string | undefined;
}

/** Warn this long before expiry: renewal needs an operator, and an expired site stops replicating. */
const EXPIRY_WARNING_MS = 30 * 24 * 3600 * 1000;

function readTlsFile(file: string, role: string, fix: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new TlsFileMissingError(`${role} ${file} does not exist; ${unsignedRequestHint(file) ?? fix}`, { cause: err });
    throw new TlsFileUnreadableError(
      `${role} ${file} cannot be read (${code ?? String(err)}); ` +
        (code === "EACCES" ? "run as a user that may read it, or fix its owner/mode" : "check that the path names a file"),
      { cause: err },
    );
  }
}

/** A missing NAME.crt beside NAME.csr: 'pki request' or 'site init --ca-cert' made it and the CA has not signed it yet. */
function unsignedRequestHint(certFile: string): string | undefined {
  if (!certFile.endsWith(".crt")) return undefined;
  const csrFile = `${certFile.slice(0, -4)}.csr`;
  if (!existsSync(csrFile)) return undefined;
  return `its request ${csrFile} is not signed yet: on the CA host run 'qreplica pki sign --ca-dir CA_DIR --csr ${basename(csrFile)} --role ROLE --out ${basename(certFile)}' and copy the certificate to ${certFile}`;
}

function splitPem(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

/**
 * Reads and cross-checks a site's TLS files at start-up, so that a wrong path or a key from
 * another issuance fails here with the file named, instead of as an opaque handshake failure
 * on the peer much later.
 */
export function loadSiteCredentials(files: SiteCredentialFiles, options: { logger?: Logger; now?: Date } = {}): SiteCredentials {
  const logger = options.logger ?? silentLogger;
  const now = options.now ?? new Date();
  const ca = readTlsFile(files.caFile, "CA certificate", "set caFile to the deployment CA's ca.crt");
  const cert = readTlsFile(files.certFile, "certificate", "set certFile to this site's .crt (see issueCertificate)");
  const key = readTlsFile(files.keyFile, "private key", "set keyFile to the .key made with the certificate");

  const caCerts: X509Certificate[] = [];
  for (const pem of splitPem(ca.toString("utf8"))) {
    try {
      caCerts.push(new X509Certificate(pem));
    } catch (err) {
      throw new TlsFileInvalidError(`CA certificate ${files.caFile} holds a certificate that does not parse`, { cause: err });
    }
  }
  if (caCerts.length === 0) {
    throw new TlsFileInvalidError(`CA certificate ${files.caFile} holds no PEM certificate; point caFile at ca.crt, not ca.key`);
  }

  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch (err) {
    throw new TlsFileInvalidError(`certificate ${files.certFile} is not a PEM certificate; point certFile at the .crt file`, { cause: err });
  }

  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    throw new TlsFileInvalidError(
      `private key ${files.keyFile} does not parse; it must be an unencrypted PEM key ` + `(decrypt one with \`openssl pkey -in ${files.keyFile} -out <new file>\`)`,
      { cause: err },
    );
  }
  if (!leaf.checkPrivateKey(privateKey)) {
    throw new TlsKeyMismatchError(
      `private key ${files.keyFile} does not belong to certificate ${files.certFile}; ` +
        "point keyFile at the key the certificate was issued for, or issue a new certificate for this key",
    );
  }

  const issuer = caCerts.find((c) => leaf.checkIssued(c) && leaf.verify(c.publicKey));
  if (!issuer) {
    throw new TlsCertificateNotFromCaError(
      `certificate ${files.certFile} (issuer ${leaf.issuer.replace(/\n/g, ", ")}) was not signed by the CA in ${files.caFile}; ` +
        "peers would refuse it. Use the CA that issued it, or re-issue it from this CA",
    );
  }

  const identity = certificateIdentity(leaf, files.certFile);
  const notBefore = new Date(leaf.validFrom);
  if (identity.notAfter <= now || notBefore > now) {
    throw new TlsCertificateNotValidNowError(
      notBefore > now
        ? `certificate ${files.certFile} is not valid before ${notBefore.toISOString()}; check this host's clock`
        : `certificate ${files.certFile} expired at ${identity.notAfter.toISOString()}; issue a new one`,
    );
  }
  if (identity.notAfter.getTime() - now.getTime() < EXPIRY_WARNING_MS) {
    logger.warn({ certFile: files.certFile, notAfter: identity.notAfter }, "site certificate expires within 30 days; issue a new one");
  }
  try {
    if ((statSync(files.keyFile).mode & 0o077) !== 0) {
      logger.warn({ keyFile: files.keyFile }, "private key is readable by group or others; chmod 600 it");
    }
  } catch {
    // Already read successfully; a failing stat only loses the warning.
  }
  return { ca, cert, key, identity, files: { ...files } };
}

/**
 * The credentials to dial with now: the files `creds` came from, read again, so an agent uses a
 * certificate renewed on disk at its next (re)connection without a restart. Files that do not
 * load (a renewal half-copied) leave it on what it had, with the reason logged.
 */
export function currentCredentials(creds: SiteCredentials, logger: Logger = silentLogger): SiteCredentials {
  if (!creds.files) return creds;
  try {
    const fresh = { ...loadSiteCredentials(creds.files), ...(creds.revocations ? { revocations: creds.revocations } : {}) };
    if (!fresh.cert.equals(creds.cert)) logger.info({ certFile: creds.files.certFile, serial: fresh.identity.serialNumber }, "dialling with the renewed certificate");
    return fresh;
  } catch (err) {
    logger.warn({ err: (err as Error).message }, "the TLS files do not load now; dialling with the certificate loaded before");
    return creds;
  }
}

/** Server side of mutual TLS: a client must present a certificate from the CA, or the handshake fails. */
export function serverCredentials(creds: SiteCredentials): grpc.ServerCredentials {
  return grpc.ServerCredentials.createSsl(creds.ca, [{ private_key: creds.key, cert_chain: creds.cert }], true);
}

/**
 * Client side of mutual TLS. The server's address is checked against its SANs as usual;
 * `expectedServerIdentity` additionally pins its CN, so an agent cannot replicate to a different
 * site of the same deployment by a DNS mistake.
 */
export function channelCredentials(creds: SiteCredentials, options: { expectedServerIdentity?: string } = {}): grpc.ChannelCredentials {
  if (options.expectedServerIdentity === undefined && !creds.revocations) return grpc.credentials.createSsl(creds.ca, creds.key, creds.cert);
  // Replaces Node's default check in grpc-js, so that check runs first here.
  return grpc.credentials.createSsl(creds.ca, creds.key, creds.cert, {
    checkServerIdentity: (host: string, cert: PeerCertificate) => checkServer(host, cert, creds, options.expectedServerIdentity),
  });
}

/** Node's name check, then the pinned site identity, then the revocation list. */
function checkServer(host: string, cert: PeerCertificate, creds: SiteCredentials, expected: string | undefined): Error | undefined {
  const err = checkServerIdentity(host, cert);
  if (err) return err;
  const cn = cert.subject?.CN;
  if (expected !== undefined && cn !== expected) {
    return new Error(
      `the server at ${host} presents the identity "${String(cn)}", not the expected site "${expected}": ` +
        "refusing to send it anything; check that the address (replicaSite) and the site id (replicaSiteId) name the same site",
    );
  }
  const revoked = creds.revocations?.refusal({ commonName: String(cn), serialNumber: cert.serialNumber });
  return revoked ? new Error(`the server at ${host}: ${revoked}; refusing to send it anything`) : undefined;
}

/**
 * Where a client dials a site: its mutual-TLS credentials and channel options together, since
 * for an address given as an IP they depend on each other. TLS forbids an IP address as the SNI
 * server name (RFC 6066; Node warns DEP0123 on every such connection), so the channel sends a
 * fixed placeholder name instead and the certificate is checked against the IP itself, exactly
 * as it would have been.
 */
export function siteDial(
  address: string,
  creds: SiteCredentials,
  options: { expectedServerIdentity?: string } = {},
): { credentials: grpc.ChannelCredentials; options: grpc.ChannelOptions } {
  const host = addressHost(address);
  if (isIP(host) === 0) return { credentials: channelCredentials(creds, options), options: grpcChannelOptions };
  const credentials = grpc.credentials.createSsl(creds.ca, creds.key, creds.cert, {
    checkServerIdentity: (_servername: string, cert: PeerCertificate) => checkServer(host, cert, creds, options.expectedServerIdentity),
  });
  return { credentials, options: { ...grpcChannelOptions, "grpc.ssl_target_name_override": SNI_PLACEHOLDER } };
}

/** Sent as the TLS server name when a site is dialled by IP; sites ignore SNI. */
const SNI_PLACEHOLDER = "qreplica-site.invalid";

/** "10.0.0.2:7443" -> "10.0.0.2", "[::1]:7443" -> "::1", "site-b.example:7443" -> "site-b.example". */
function addressHost(address: string): string {
  const target = address.replace(/^[a-z]+:\/\/?/i, "");
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(target);
  if (bracketed) return bracketed[1]!;
  const colon = target.lastIndexOf(":");
  return colon > 0 && target.indexOf(":") === colon ? target.slice(0, colon) : target;
}

/** Who is on the other end of a call, from its verified client certificate. */
export function peerIdentity(call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate } | null }): CertificateIdentity {
  const peer = call.getAuthContext()?.sslPeerCertificate;
  if (!peer?.raw) {
    throw new UnauthenticatedPeerError("the call carries no verified client certificate; the server must run with serverCredentials() (mutual TLS)");
  }
  return certificateIdentity(new X509Certificate(peer.raw), "peer certificate");
}

export const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

const KEEPALIVE_TIME_MS = 20_000;

/**
 * Channel options for agents and sites dialling a site. Keepalive notices a dead peer (or a NAT
 * that dropped the flow) in ~30 s instead of at the kernel's TCP timeout; 8 MiB leaves room above
 * 4 MiB chunks for incompressible data sent raw plus framing. Retries are off: a Replicate stream
 * is never replayed by grpc-js (the agent resumes cycles itself), and the retry layer would
 * otherwise hold on to every message it might have to replay.
 */
export const grpcChannelOptions: grpc.ChannelOptions = Object.freeze({
  "grpc.enable_retries": 0,
  "grpc-node.flow_control_window": CLIENT_RECEIVE_WINDOW_BYTES,
  "grpc.keepalive_time_ms": KEEPALIVE_TIME_MS,
  "grpc.keepalive_timeout_ms": 10_000,
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  "grpc.initial_reconnect_backoff_ms": 1_000,
  "grpc.max_reconnect_backoff_ms": 30_000,
});

export const grpcServerOptions: grpc.ServerOptions = Object.freeze({
  "grpc.keepalive_time_ms": KEEPALIVE_TIME_MS,
  "grpc.keepalive_timeout_ms": 10_000,
  "grpc.keepalive_permit_without_calls": 1,
  // Pings more often than this without data earn a GOAWAY "too_many_pings" from C-core and Go
  // servers; it must stay below the clients' keepalive_time. grpc-js servers do not police pings
  // today, so this documents the contract and keeps it should the server side ever change.
  "grpc.http2.min_ping_interval_without_data_ms": KEEPALIVE_TIME_MS / 2,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
});
