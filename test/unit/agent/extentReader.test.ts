import { setImmediate as tick } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { READ_AHEAD_PIECES, readRanges, type ByteRange, type CaptureExtent } from "../../../replica-agent/capture/extentReader.js";
import type { NbdClient } from "../../../src/qemu/nbd/index.js";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Byte i of the disk: never zero, so no piece is taken for a zero run. */
const byteAt = (i: number) => (i % 251) + 1;
const PATTERN = Buffer.from(Array.from({ length: 4 * MiB + 251 }, (_, i) => byteAt(i)));

/** An NBD export whose READs fill the buffer with byteAt; `gate` holds replies back until released. */
function fakeExport(opts: { gated?: boolean } = {}) {
  const waiting: Array<() => void> = [];
  const stats = { bytesRead: 0, inFlight: 0, maxInFlight: 0 };
  const client = {
    maxRequestBytes: 32 * MiB,
    read(offset: number, length: number, into: Buffer): Promise<Buffer> {
      stats.inFlight++;
      stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
      const reply = () => {
        PATTERN.copy(into, 0, offset % 251, (offset % 251) + length);
        stats.bytesRead += length;
        stats.inFlight--;
        return into;
      };
      if (!opts.gated) return Promise.resolve().then(reply);
      return new Promise((resolve) => waiting.push(() => resolve(reply())));
    },
  };
  return {
    client: client as unknown as NbdClient,
    stats,
    release: () => {
      for (const w of waiting.splice(0)) w();
    },
  };
}

async function* ranges(list: ByteRange[]): AsyncGenerator<ByteRange> {
  yield* list;
}

function expectPattern(piece: CaptureExtent): void {
  if (piece.kind !== "data") throw new Error(`expected data at ${piece.offset}`);
  for (let i = 0; i < piece.length; i += 4093) expect(piece.data[i]).toBe(byteAt(piece.offset + i));
  expect(piece.data[piece.length - 1]).toBe(byteAt(piece.offset + piece.length - 1));
}

describe("readRanges", () => {
  it("reads ahead of a slow consumer by the reads in flight and READ_AHEAD_PIECES pieces only, whatever the cycle size", async () => {
    const { client, stats } = fakeExport();
    const opts = { readRequestBytes: 256 * KiB, maxInFlight: 64, pieceBytes: 2 * MiB };
    const total = 96 * MiB;
    let yielded = 0;
    let worstAhead = 0;
    for await (const piece of readRanges([client], ranges([{ offset: 0, length: total, zero: false }]), opts)) {
      expectPattern(piece);
      yielded += piece.length;
      // A slow consumer: every read the reader started meanwhile has completed.
      for (let i = 0; i < 5; i++) await tick();
      worstAhead = Math.max(worstAhead, stats.bytesRead - yielded);
    }
    expect(yielded).toBe(total);
    // Before the bound, read pieces piled up to 2 x maxInFlight of them (256 MiB at most; all of this cycle).
    expect(worstAhead).toBeLessThanOrEqual(opts.maxInFlight * opts.readRequestBytes + READ_AHEAD_PIECES * opts.pieceBytes);
    expect(worstAhead).toBeGreaterThanOrEqual(opts.maxInFlight * opts.readRequestBytes);
  });

  it("keeps maxInFlight READs going when the dirty ranges are small", async () => {
    const { client, stats, release } = fakeExport({ gated: true });
    const opts = { readRequestBytes: 256 * KiB, maxInFlight: 64, pieceBytes: 2 * MiB };
    // 100 dirty ranges of 64 KiB, 1 MiB apart: one small piece each.
    const list = Array.from({ length: 100 }, (_, i) => ({ offset: i * MiB, length: 64 * KiB, zero: false }));
    const reader = readRanges([client], ranges(list), opts);
    const first = reader.next();
    for (let i = 0; i < 5; i++) await tick();
    expect(stats.maxInFlight).toBe(opts.maxInFlight);
    let n = 0;
    const pending = (async () => {
      const r = await first;
      if (!r.done) {
        expectPattern(r.value);
        n++;
      }
      for await (const piece of { [Symbol.asyncIterator]: () => reader }) {
        expectPattern(piece);
        n++;
      }
    })();
    while (n < list.length) {
      release();
      await tick();
    }
    await pending;
    expect(n).toBe(list.length);
  });
});
