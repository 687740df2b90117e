/**
 * Splits the agent's byte stream into lines. QGA's framing has two quirks a plain line reader
 * gets wrong:
 *  - guest-sync-delimited prefixes its reply with a 0xFF byte, which never occurs in UTF-8 JSON;
 *    it means "whatever came before is stale", so any partial line is dropped there.
 *  - Nothing bounds a line, and a confused peer (or a stale stream) could send megabytes
 *    without a newline; past the bound the line is reported once and skipped to its end.
 */
export type FrameEvent = { kind: "sentinel" } | { kind: "line"; line: string } | { kind: "overlong"; limit: number };

export const SENTINEL = 0xff;
const NEWLINE = 0x0a;

export class QgaLineSplitter {
  private parts: Buffer[] = [];
  private size = 0;
  private discarding = false;

  constructor(private readonly maxLineBytes: number) {}

  push(chunk: Buffer): FrameEvent[] {
    const events: FrameEvent[] = [];
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i];
      if (byte !== SENTINEL && byte !== NEWLINE) continue;
      this.append(chunk.subarray(start, i), events);
      start = i + 1;
      if (byte === SENTINEL) {
        this.reset();
        events.push({ kind: "sentinel" });
      } else {
        if (!this.discarding) {
          const line = Buffer.concat(this.parts, this.size).toString("utf8").trim();
          if (line.length > 0) events.push({ kind: "line", line });
        }
        this.reset();
      }
    }
    this.append(chunk.subarray(start), events);
    return events;
  }

  /** Forgets any partial line, e.g. when the connection is replaced. */
  reset(): void {
    this.parts = [];
    this.size = 0;
    this.discarding = false;
  }

  private append(piece: Buffer, events: FrameEvent[]): void {
    if (this.discarding || piece.length === 0) return;
    if (this.size + piece.length > this.maxLineBytes) {
      this.parts = [];
      this.size = 0;
      this.discarding = true;
      events.push({ kind: "overlong", limit: this.maxLineBytes });
      return;
    }
    this.parts.push(piece);
    this.size += piece.length;
  }
}
