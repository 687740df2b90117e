import type { NbdClient } from "./client.js";

/**
 * The READ size QEMU's NBD server serves most cheaply: it spends ~3x the CPU per byte on 1 MiB
 * requests (measured with qemu-storage-daemon 7.2: 0.7-1.0 against 0.22-0.33 CPU-s per GiB), and
 * 64 KiB ones cost it per request.
 */
export const EFFICIENT_READ_BYTES = 256 * 1024;

/**
 * Reads [offset, offset+length) into `into` as several requests in flight at once, of `pieceBytes`
 * (default EFFICIENT_READ_BYTES).
 */
export async function readInPieces(client: NbdClient, offset: number, length: number, into: Buffer, opts: { pieceBytes?: number } = {}): Promise<Buffer> {
  const piece = opts.pieceBytes ?? EFFICIENT_READ_BYTES;
  const requests: Array<Promise<Buffer>> = [];
  for (let at = 0; at < length; at += piece) requests.push(client.read(offset + at, Math.min(piece, length - at), into.subarray(at)));
  await Promise.all(requests);
  return into.subarray(0, length);
}
