const MiB = 1024 * 1024;

/**
 * Bytes of chunk data between two young-generation GCs: each chunk leaves about twice its wire
 * size in dead buffers behind (the agent: its encoded request and grpc-js's framed copy; the
 * site: HTTP/2's read buffers and grpc-js's reassembled message).
 */
export const YOUNG_GC_EVERY_BYTES = 16 * MiB;

/**
 * Frees the large short-lived buffers a data path leaves behind, as they come. V8 frees a
 * Buffer's memory only in a GC of the object holding it; a chunk costs too few JS objects to fill
 * the young generation often, and V8 starts a GC for external memory only some 64-128 MiB past the
 * last full one: dead chunk buffers made up most of a 4 GiB cycle's peak RSS in the agent and the
 * site, and the full GCs they forced a good part of the agent's CPU. A young-generation GC every
 * YOUNG_GC_EVERY_BYTES (about a millisecond: little in it survives) frees them instead. Needs
 * node's --expose-gc, which the bins pass (bin/*.js); without it this does nothing.
 */
export class YoungGc {
  private since = 0;

  constructor(
    private readonly everyBytes = YOUNG_GC_EVERY_BYTES,
    private readonly collect: (() => void) | undefined = globalThis.gc ? () => globalThis.gc?.({ type: "minor" }) : undefined,
  ) {}

  /** `bytes` more went through; collects once everyBytes have since the last collection. */
  note(bytes: number): void {
    if (!this.collect) return;
    this.since += bytes;
    if (this.since < this.everyBytes) return;
    this.since = 0;
    this.collect();
  }
}
