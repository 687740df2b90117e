export { buildBootSector, buildCounterBootSector, COUNTER_ASM, DEFAULT_BOOT_SECTOR_PATH, type BootSectorBuild } from "./build.js";
export { GuestBuildError, GuestDiskError, GuestSerialError } from "./errors.js";
export { makeCounterDisk, type CounterDisk, type CounterDiskOptions } from "./makeDisk.js";
export { COUNTER_LBA, COUNTER_MAGIC, COUNTER_OFFSET, decodeCounterRecord, encodeCounterRecord, SECTOR_BYTES, type CounterRecord } from "./record.js";
export {
  parseSerialLog,
  readCounters,
  readDiskCounter,
  readDiskRecord,
  readSerialLog,
  readSerialReport,
  waitForCounter,
  type SerialReport,
  type WaitForCounterOptions,
} from "./serialLog.js";
