export { ChainMismatchError, ExtentOutOfRangeError, SeedUnusableError, StorageDaemonExitedError, StorageWriteError } from "./errors.js";
export { DiskPointWriter } from "./pointWriter.js";
export { PointWrite, ReplicaStorage, safeSegment, type CommittedPointImages, type PointDiskSpec } from "./replicaStorage.js";
export { SiteStorageDaemon } from "./siteStorageDaemon.js";
export { chunkHashes } from "./seedHashes.js";
export { decodeChunkHashes, encodeChunkHashes, type ChunkHashIndex } from "./chunkHashFile.js";
export { ALLOCATION_DEPTH_CONTEXT, pointExtents, type PointExtentsOptions } from "./pointExtents.js";
