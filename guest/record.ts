/**
 * The counter guest's on-disk record (see counter.asm): LBA 1 holds
 * `"QRCNTR01"` (8 bytes), the counter (u64 LE) at +8, the boot number (u32 LE) at +16.
 */
export const SECTOR_BYTES = 512;
export const COUNTER_LBA = 1;
export const COUNTER_OFFSET = COUNTER_LBA * SECTOR_BYTES;
export const COUNTER_MAGIC = "QRCNTR01";

export interface CounterRecord {
  counter: number;
  boots: number;
}

export function encodeCounterRecord(record: CounterRecord): Buffer {
  if (!Number.isSafeInteger(record.counter) || record.counter < 0) throw new RangeError(`counter must be a safe non-negative integer, got ${record.counter}`);
  if (!Number.isInteger(record.boots) || record.boots < 0 || record.boots > 0xffff_ffff) throw new RangeError(`boots must be a u32, got ${record.boots}`);
  const buf = Buffer.alloc(SECTOR_BYTES);
  buf.write(COUNTER_MAGIC, 0, "latin1");
  buf.writeBigUInt64LE(BigInt(record.counter), 8);
  buf.writeUInt32LE(record.boots, 16);
  return buf;
}

/**
 * `null` when the sector has no magic (a fresh disk the guest never wrote: it starts at 0).
 * Throws a RangeError for a counter above 2^53 - 1, which a number cannot hold exactly.
 */
export function decodeCounterRecord(sector: Buffer): CounterRecord | null {
  if (sector.length < 20 || sector.toString("latin1", 0, 8) !== COUNTER_MAGIC) return null;
  const counter = sector.readBigUInt64LE(8);
  if (counter > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`counter ${counter} is above Number.MAX_SAFE_INTEGER`);
  return { counter: Number(counter), boots: sector.readUInt32LE(16) };
}
