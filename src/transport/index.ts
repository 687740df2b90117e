// Public surface of the transport: chunk encoding, backpressure, PKI and mutual-TLS plumbing.
export {
  KNOWN_CHECKSUMS,
  MAX_WIRE_LENGTH,
  decodeExtentChunk,
  encodeExtentChunk,
  encodeExtentChunkRequest,
  sha256,
  type DecodeOptions,
  type DecodedChunk,
  type EncodeOptions,
  type ExtentPiece,
} from "./chunks.js";
export {
  ChecksumMismatchError,
  ChunkDecompressionFailedError,
  ChunkOutOfRangeError,
  ChunkRejectedError,
  InvalidExtentError,
  UnsupportedChecksumAlgorithmError,
  UnsupportedChunkCodecError,
  toChunkRejected,
  type ChunkRef,
  type ChunkRejectCode,
} from "./chunkErrors.js";
export {
  CLIENT_RECEIVE_WINDOW_BYTES,
  CONNECTION_WINDOW_BYTES,
  FlowControlSetupError,
  limitReadAhead,
  MAX_STREAM_WINDOW_BYTES,
  REPLICATE_READ_AHEAD_MESSAGES,
  SITE_WINDOW_TUNING,
  STREAM_WINDOW_BYTES,
  widenServerFlowControl,
} from "./flowControl.js";
export { tuneSessionWindows, type WindowTuner, type WindowTuning } from "./windowTuner.js";
export { EncodedReplicateRequest, ReplicationClient, serializeReplicateRequest, type OutgoingReplicateRequest } from "./replicateWire.js";
export { digestFromWire, digestToWire, pickResyncDigest } from "./resyncDigests.js";
export { RESYNC_CHUNK_BYTES, resyncChunkBytes } from "./resyncChunks.js";
export { StreamClosedError, untilWritten, writeWithBackpressure, type BackpressureWritable, type WriteOptions } from "./backpressure.js";
export { ReplicateResponses, sendOnReplicate, type ReplicateClientStream } from "./replicateResponses.js";
export { Uint64RangeError, toUint64, toWireGeneration, uint64ToSafeNumber } from "./uint64.js";
export {
  certificateIdentity,
  ROLE_URI_PREFIX,
  createCa,
  issueCertificate,
  type CaFiles,
  type CertificateIdentity,
  type IssuedFiles,
} from "./pki.js";
export {
  MAX_MESSAGE_BYTES,
  channelCredentials,
  currentCredentials,
  siteDial,
  grpcChannelOptions,
  grpcServerOptions,
  loadSiteCredentials,
  peerIdentity,
  serverCredentials,
  type SiteCredentialFiles,
  type SiteCredentials,
} from "./tls.js";
export {
  CertificateRevokedError,
  CrlInvalidError,
  OpensslError,
  PkiFileExistsError,
  PkiInvalidNameError,
  TlsCertificateNotFromCaError,
  TlsCertificateNotValidNowError,
  TlsFileInvalidError,
  TlsFileMissingError,
  TlsFileUnreadableError,
  TlsKeyMismatchError,
  UnauthenticatedPeerError,
} from "./errors.js";
export { ROLES, isRole, roleAllows, type Role } from "./roles.js";
export { CRL_FILE_NAME, FixedRevocationList, RevocationList, generateCrl, loadCrl, revokeCertificate, revokedEntries, type LoadedCrl, type RevokedEntry } from "./revocation.js";
export { createCertificateRequest, readCertificateRequest, signCertificateRequest } from "./pkiRequest.js";
export { CERTIFICATE_REFRESH_MS, RenewingSiteCredentials } from "./renewingCredentials.js";
