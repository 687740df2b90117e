/** Requests awaiting replies, and the per-request state the reply reader fills in. */
import type { NbdCommandError } from "./errors.js";

export interface NbdExtent {
  offset: number;
  length: number;
  flags: number;
}

/** A request awaiting its reply. The reader fills the parse-state fields. */
export interface InFlight {
  readonly cookie: number;
  readonly command: number;
  readonly offset: number;
  readonly length: number;
  /** READ: where the data goes (exactly `length` bytes). */
  readonly buffer: Buffer | undefined;
  /** BLOCK_STATUS: the context whose descriptors the caller wants. */
  readonly contextId: number | undefined;
  /** Payload bytes placed so far (READ), for truncation diagnostics. */
  received: number;
  chunks: number;
  coverage: Coverage | undefined;
  extents: NbdExtent[] | undefined;
  contextsSeen: Set<number> | undefined;
  /** First error the server reported; the request rejects with it once the reply is DONE. */
  error: NbdCommandError | undefined;
}

export interface ReplySink {
  lookup(cookie: number): InFlight | undefined;
  /** True when the cookie belonged to a request that already completed. */
  wasIssued(cookie: number): boolean;
  /** The reply is complete (DONE or a simple reply). `req.error` tells success from failure. */
  complete(req: InFlight): void;
}

export function newInFlight(cookie: number, command: number, offset: number, length: number, buffer?: Buffer, contextId?: number): InFlight {
  return {
    cookie,
    command,
    offset,
    length,
    buffer,
    contextId,
    received: 0,
    chunks: 0,
    coverage: undefined,
    extents: undefined,
    contextsSeen: undefined,
    error: undefined,
  };
}

/** Which parts of a READ's range have been filled; rejects overlaps. Chunks usually arrive in order. */
export class Coverage {
  private starts: number[] = [];
  private ends: number[] = [];

  add(start: number, length: number): boolean {
    if (length === 0) return true;
    const end = start + length;
    const n = this.starts.length;
    const lastEnd = n > 0 ? this.ends[n - 1]! : 0;
    if (n === 0 || start >= lastEnd) {
      if (n > 0 && start === lastEnd) this.ends[n - 1] = end;
      else {
        this.starts.push(start);
        this.ends.push(end);
      }
      return true;
    }
    // Out of order: find the first interval ending after `start`; it must begin at or after `end`.
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid]! <= start) lo = mid + 1;
      else hi = mid;
    }
    if (this.starts[lo]! < end) return false;
    this.starts.splice(lo, 0, start);
    this.ends.splice(lo, 0, end);
    return true;
  }
}
