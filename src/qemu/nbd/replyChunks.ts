/**
 * Payloads of the structured reply chunks that carry more than data: block status descriptors and
 * errors. Lengths were bounded by the reply reader before the payload was buffered; these check
 * what the payload says against the request it answers. `fail` builds the NbdProtocolError.
 */
import { NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_ERROR_OFFSET } from "./constants.js";
import type { InFlight, NbdExtent } from "./inFlight.js";

type Fail = (detail: string) => Error;

/** Records the extents of the request's own meta context on `req`; other contexts are only checked. */
export function parseBlockStatusChunk(req: InFlight, payload: Buffer, contexts: ReadonlyMap<number, string>, fail: Fail): void {
  const id = payload.readUInt32BE(0);
  const name = contexts.get(id);
  if (name === undefined) throw fail(`BLOCK_STATUS chunk for meta context id ${id}, which was never negotiated`);
  const seen = (req.contextsSeen ??= new Set());
  if (seen.has(id)) throw fail(`second BLOCK_STATUS chunk for meta context "${name}"`);
  seen.add(id);
  if (id !== req.contextId) return;
  const extents: NbdExtent[] = (req.extents = []);
  let pos = 0;
  for (let i = 4; i < payload.length; i += 8) {
    const length = payload.readUInt32BE(i);
    const flags = payload.readUInt32BE(i + 4);
    if (length === 0) throw fail(`BLOCK_STATUS descriptor ${(i - 4) / 8} for "${name}" has length 0`);
    if (pos >= req.length) throw fail(`BLOCK_STATUS for "${name}" has descriptors past the requested ${req.length} bytes (only the last may overrun)`);
    extents.push({ offset: req.offset + pos, length, flags });
    pos += length;
  }
}

/** The errno and message of an ERROR / ERROR_OFFSET chunk (or an unknown error-type chunk). */
export function parseErrorChunk(req: InFlight, type: number, payload: Buffer, fail: Fail): { errno: number; message: string } {
  const errno = payload.readUInt32BE(0);
  const msgLength = payload.readUInt16BE(4);
  const tail = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
  const exact = type === NBD_REPLY_TYPE_ERROR || type === NBD_REPLY_TYPE_ERROR_OFFSET;
  const fits = exact ? payload.length === 6 + msgLength + tail : payload.length >= 6 + msgLength;
  if (!fits) throw fail(`message length ${msgLength} does not fit its ${payload.length}-byte payload`);
  if (errno === 0) throw fail("error value 0");
  let message = payload.toString("utf8", 6, 6 + msgLength);
  if (type === NBD_REPLY_TYPE_ERROR_OFFSET) {
    const hi = payload.readUInt32BE(6 + msgLength);
    const errOffset = hi * 0x1_0000_0000 + payload.readUInt32BE(10 + msgLength);
    if (errOffset < req.offset || errOffset >= req.offset + req.length) throw fail(`ERROR_OFFSET chunk points at offset ${errOffset}, outside the request`);
    message = message ? `${message} (at offset ${errOffset})` : `at offset ${errOffset}`;
  }
  return { errno, message };
}
