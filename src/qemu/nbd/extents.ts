import { NbdProtocolError } from "./errors.js";
import type { NbdExtent } from "./inFlight.js";

/**
 * Covers [offset, end) with extents by repeated block status queries. The server may describe less
 * than asked (loop from the first uncovered byte) or more with its last extent (clip); adjacent
 * extents with equal flags are merged, also across queries.
 */
export async function* coverRange(query: (offset: number, length: number) => Promise<NbdExtent[]>, offset: number, end: number, describe: () => string): AsyncGenerator<NbdExtent> {
  let pos = offset;
  let pending: NbdExtent | undefined;
  while (pos < end) {
    const batch = await query(pos, end - pos);
    const before = pos;
    for (const e of batch) {
      if (e.offset !== pos || pos >= end) break;
      const stop = Math.min(e.offset + e.length, end);
      if (pending !== undefined && pending.flags === e.flags) {
        pending.length = stop - pending.offset;
      } else {
        if (pending !== undefined) yield pending;
        pending = { offset: pos, length: stop - pos, flags: e.flags };
      }
      pos = stop;
    }
    if (pos === before) throw new NbdProtocolError(`NBD BLOCK_STATUS ${describe()} made no progress at offset ${pos}`);
  }
  if (pending !== undefined) yield pending;
}
