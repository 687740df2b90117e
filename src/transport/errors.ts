import { QreplicaError } from "../common/errors.js";

// Certificates and TLS files. Each message names the file and what to do about it, because these
// surface at `site serve` / agent start-up in front of an operator, not a developer.

/** An `openssl` invocation failed (or openssl is not installed). */
export class OpensslError extends QreplicaError {
  readonly code = "OPENSSL_FAILED" as const;
}

/** A PKI operation would overwrite a key or certificate. */
export class PkiFileExistsError extends QreplicaError {
  readonly code = "PKI_FILE_EXISTS" as const;
}

/** A name that cannot be a certificate CN and DNS SAN (e.g. contains '/' or spaces). */
export class PkiInvalidNameError extends QreplicaError {
  readonly code = "PKI_INVALID_NAME" as const;
}

export class TlsFileMissingError extends QreplicaError {
  readonly code = "TLS_FILE_MISSING" as const;
}

export class TlsFileUnreadableError extends QreplicaError {
  readonly code = "TLS_FILE_UNREADABLE" as const;
}

/** Not PEM, not a certificate or key, or an encrypted key (which a daemon cannot unlock). */
export class TlsFileInvalidError extends QreplicaError {
  readonly code = "TLS_FILE_INVALID" as const;
}

export class TlsKeyMismatchError extends QreplicaError {
  readonly code = "TLS_KEY_MISMATCH" as const;
}

/** The site's own certificate was not issued by the CA it trusts, so its peers will refuse it. */
export class TlsCertificateNotFromCaError extends QreplicaError {
  readonly code = "TLS_CERT_NOT_FROM_CA" as const;
}

/** Expired, or not yet valid (a clock behind the issuer's). */
export class TlsCertificateNotValidNowError extends QreplicaError {
  readonly code = "TLS_CERT_NOT_VALID_NOW" as const;
}

/** A call reached a handler without a verified client certificate (should be impossible with mTLS). */
export class UnauthenticatedPeerError extends QreplicaError {
  readonly code = "UNAUTHENTICATED" as const;
}

/** A certificate revocation list that does not parse, or was not signed by the deployment CA. */
export class CrlInvalidError extends QreplicaError {
  readonly code = "CRL_INVALID" as const;
}

/** A peer presented a certificate the deployment CA revoked. */
export class CertificateRevokedError extends QreplicaError {
  readonly code = "CERTIFICATE_REVOKED" as const;
}
