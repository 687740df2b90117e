import { CodecError } from "./errors.js";

/** What a zstd frame says about itself, read from its header and block headers (RFC 8878 §3.1.1). */
export interface ZstdFrameInfo {
  /** Frame_Content_Size, when the header carries it. */
  contentSize: number | undefined;
  /** Bytes the frame occupies, checksum included. */
  frameBytes: number;
  /** The 4 checksum bytes at the frame's end (low 32 bits of XXH64, little-endian), if present. */
  checksum: Buffer | undefined;
}

const MAGIC = 0xfd2fb528;
const BLOCK_RAW = 0;
const BLOCK_RLE = 1;
const BLOCK_COMPRESSED = 2;

/**
 * Walks the frame at the start of `buf` without decompressing it: the header, then each block
 * header, to find where the frame ends and what its checksum is. Every length is checked against
 * the buffer before it is used; anything malformed is a `CodecError` ("corrupt").
 */
export function inspectZstdFrame(buf: Uint8Array): ZstdFrameInfo {
  const corrupt = (why: string) => new CodecError(`not a valid zstd frame: ${why}`, "corrupt");
  const view = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (view.length < 6) throw corrupt(`${view.length} bytes is shorter than any frame`);
  if (view.readUInt32LE(0) !== MAGIC) throw corrupt("wrong magic number");
  const descriptor = view[4]!;
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor >> 5) & 1;
  if ((descriptor >> 3) & 1) throw corrupt("reserved header bit set");
  const hasChecksum = ((descriptor >> 2) & 1) === 1;
  const dictIdBytes = [0, 1, 2, 4][descriptor & 3]!;
  const fcsBytes = fcsFlag === 0 ? singleSegment : [1, 2, 4, 8][fcsFlag]!;
  let pos = 5 + (singleSegment ? 0 : 1) + dictIdBytes;
  if (pos + fcsBytes > view.length) throw corrupt("truncated header");
  let contentSize: number | undefined;
  if (fcsBytes === 1) contentSize = view[pos]!;
  else if (fcsBytes === 2) contentSize = view.readUInt16LE(pos) + 256;
  else if (fcsBytes === 4) contentSize = view.readUInt32LE(pos);
  else if (fcsBytes === 8) {
    const big = view.readBigUInt64LE(pos);
    if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`content size ${big} is beyond 2^53`);
    contentSize = Number(big);
  }
  pos += fcsBytes;
  for (;;) {
    if (pos + 3 > view.length) throw corrupt("truncated block header");
    const header = view[pos]! | (view[pos + 1]! << 8) | (view[pos + 2]! << 16);
    pos += 3;
    const last = header & 1;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === BLOCK_RLE) pos += 1;
    else if (type === BLOCK_RAW || type === BLOCK_COMPRESSED) pos += size;
    else throw corrupt("reserved block type");
    if (pos > view.length) throw corrupt("truncated block");
    if (last) break;
  }
  let checksum: Buffer | undefined;
  if (hasChecksum) {
    if (pos + 4 > view.length) throw corrupt("truncated content checksum");
    checksum = view.subarray(pos, pos + 4);
    pos += 4;
  }
  return { contentSize, frameBytes: pos, checksum };
}
