import * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../common/errors.js";
import { silentLogger, type Logger } from "../common/logger.js";
import { loadSiteCredentials, type SiteCredentialFiles, type SiteCredentials } from "./tls.js";

type Provider = grpc.experimental.CertificateProvider;
type CaListener = grpc.experimental.CaCertificateUpdateListener;
type IdentityListener = grpc.experimental.IdentityCertificateUpdateListener;

/** How often a site looks at its TLS files for a renewed certificate. */
export const CERTIFICATE_REFRESH_MS = 10_000;

/**
 * A site's TLS files, read again every `refreshMs`: a certificate renewed on disk (same paths) is
 * served to new connections without a restart, while connections already open keep the session
 * they negotiated, so open Replicate streams go on. Unlike grpc-js's FileWatcherCertificateProvider,
 * a new set of files is used only once it passes every start-up check of loadSiteCredentials
 * (the key matches the certificate, the CA signed it, it is valid now): a half-copied renewal, a
 * key and certificate from two issuances or a wrong CA keep the site on the files it had, with
 * the reason logged, instead of dropping every handshake.
 */
export class RenewingSiteCredentials implements Provider {
  private current: SiteCredentials;
  private readonly caListeners = new Set<CaListener>();
  private readonly identityListeners = new Set<IdentityListener>();
  private timer: NodeJS.Timeout | undefined;
  private lastProblem: string | undefined;
  private readonly logger: Logger;
  private readonly refreshMs: number;
  private readonly onRenewed: ((creds: SiteCredentials) => void) | undefined;

  constructor(
    private readonly files: SiteCredentialFiles,
    initial: SiteCredentials,
    options: { logger?: Logger; refreshMs?: number; onRenewed?: (creds: SiteCredentials) => void } = {},
  ) {
    this.current = initial;
    this.logger = options.logger ?? silentLogger;
    this.refreshMs = options.refreshMs ?? CERTIFICATE_REFRESH_MS;
    this.onRenewed = options.onRenewed;
  }

  /** The credentials served to new connections now. */
  get credentials(): SiteCredentials {
    return this.current;
  }

  /** Mutual TLS with a client certificate from the CA required, served from the files as they are renewed. */
  serverCredentials(): grpc.ServerCredentials {
    const creds = grpc.experimental.createCertificateProviderServerCredentials(this, this, true);
    // grpc-js reads the credentials' context when it creates the listening server but registers
    // with the provider only afterwards: without a first watcher now, the server would start with
    // no context and drop every connection until the first renewal.
    creds._addWatcher(() => undefined);
    return creds;
  }

  /** Reads the files now; true when a renewed set was taken. */
  check(): boolean {
    let next: SiteCredentials;
    try {
      // Silent: the start-up warnings (expiry, key mode) would repeat every refresh; health reports expiry.
      next = loadSiteCredentials(this.files);
    } catch (err) {
      const problem = errorMessage(err);
      if (problem !== this.lastProblem) this.logger.error({ err: problem }, "the TLS files do not load; new connections keep getting the certificate served so far");
      this.lastProblem = problem;
      return false;
    }
    this.lastProblem = undefined;
    const old = this.current;
    if (next.cert.equals(old.cert) && next.key.equals(old.key) && next.ca.equals(old.ca)) return false;
    this.current = next;
    this.logger.info(
      { certFile: this.files.certFile, serial: next.identity.serialNumber, previousSerial: old.identity.serialNumber, notAfter: next.identity.notAfter },
      "renewed certificate: new connections get it; open streams keep theirs",
    );
    for (const l of this.identityListeners) l({ certificate: next.cert, privateKey: next.key });
    for (const l of this.caListeners) l({ caCertificate: next.ca });
    this.onRenewed?.(next);
    return true;
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  // The listeners are called at once with what is loaded, so the server has a context before its first handshake.
  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    listener({ caCertificate: this.current.ca });
    this.watch();
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    listener({ certificate: this.current.cert, privateKey: this.current.key });
    this.watch();
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }

  private watch(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.check(), this.refreshMs);
    this.timer.unref();
  }
}
