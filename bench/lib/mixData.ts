import { randomFillSync } from "node:crypto";
import { closeSync, openSync, writeSync } from "node:fs";
import { join } from "node:path";
import { runTool } from "../../src/qemu/processes/index.js";

const KiB = 1024;
const MiB = 1024 * KiB;

export type BlockKind = "random" | "zero" | "text";

/** One file of the mix and where it goes on the disk. */
export interface MixSegment {
  path: string;
  offset: number;
  length: number;
}

export interface MixData {
  totalBytes: number;
  segments: MixSegment[];
  /** Bytes of each kind, as generated. */
  bytes: Record<BlockKind, number>;
  blocks: number;
}

/** Target shares of the realistic mix: a quarter random, a quarter zeroes, half log-like text. */
const SHARES: Record<BlockKind, number> = { random: 0.25, zero: 0.25, text: 0.5 };
/** Segment files are written with one `qemu-io write -s` each, which loads the whole file. */
const SEGMENT_BYTES = 128 * MiB;
const BLOCK_ALIGN = 64 * KiB;

/** xorshift32: deterministic, fast, good enough for picking log fields. */
class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  int(n: number): number {
    return this.next() % n;
  }
  hex(digits: number): string {
    let out = "";
    while (out.length < digits) out += this.next().toString(16).padStart(8, "0");
    return out.slice(0, digits);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
}

const HOSTS = ["web-01", "web-02", "web-03", "api-07", "api-08", "db-02", "worker-11", "worker-12"];
const PATHS = ["/api/v2/orders", "/api/v2/customers", "/api/v2/items", "/api/v1/search", "/healthz", "/static/app.js", "/login", "/api/v2/invoices"];
const METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE"];
const STATUS = [200, 200, 200, 200, 201, 204, 301, 304, 400, 404, 500];
const LEVELS = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
const SERVICES = ["order.service", "billing.worker", "auth.session", "inventory.sync", "mail.queue", "search.indexer"];
const AGENTS = [
  "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
  "curl/7.88.1",
  "kube-probe/1.29",
  "python-requests/2.31.0",
];

/** One log line without its timestamp: syslog/nginx/application/database styles, fields varying. */
function logLine(rng: Rng): string {
  const host = rng.pick(HOSTS);
  switch (rng.int(4)) {
    case 0:
    case 1: {
      const path = `${rng.pick(PATHS)}/${rng.int(100_000)}`;
      return `${host} nginx[${1000 + rng.int(9000)}]: 10.${rng.int(256)}.${rng.int(256)}.${rng.int(256)} - - "${rng.pick(METHODS)} ${path} HTTP/1.1" ${rng.pick(STATUS)} ${rng.int(50_000)} "-" "${rng.pick(AGENTS)}" rt=0.${String(rng.int(1000)).padStart(3, "0")}\n`;
    }
    case 2:
      return `${host} app[${100 + rng.int(900)}]: ${rng.pick(LEVELS).padEnd(5)} [worker-${rng.int(16)}] ${rng.pick(SERVICES)}: processed request id=${rng.hex(16)} customer=${rng.int(1_000_000)} items=${rng.int(20)} total=${rng.int(100_000) / 100} in ${rng.int(2000)}ms\n`;
    default:
      return `${host} postgres[${2000 + rng.int(500)}]: LOG:  duration: ${rng.int(5000)}.${rng.int(1000)} ms  statement: SELECT id, status, updated_at FROM orders WHERE customer_id = ${rng.int(1_000_000)} AND status IN ('open','paid') ORDER BY updated_at DESC LIMIT ${1 + rng.int(100)}\n`;
  }
}

/**
 * Log-like text: lines drawn at random from a pool of 65,536 generated lines (about 9 MiB, far
 * beyond zstd's window at the levels used, so repeats do not flatter compression), each behind a
 * fresh, advancing ISO timestamp. Rendering every line anew is ~10x slower for the same bytes.
 */
class LogText {
  private readonly pool: Buffer[] = [];
  private ms = Date.UTC(2025, 2, 14, 8, 0, 0);
  private second = -1;
  private prefix = Buffer.alloc(0);

  constructor(private readonly rng: Rng) {
    for (let i = 0; i < 65_536; i++) this.pool.push(Buffer.from(logLine(rng), "latin1"));
  }

  fill(buf: Buffer): void {
    const rng = this.rng;
    const line = Buffer.alloc(512);
    let pos = 0;
    while (pos < buf.length) {
      this.ms += rng.int(40);
      const second = Math.floor(this.ms / 1000);
      if (second !== this.second) {
        this.second = second;
        this.prefix = Buffer.from(new Date(second * 1000).toISOString().slice(0, 20), "latin1"); // "2025-03-14T08:00:00."
      }
      const frac = this.ms % 1000;
      let n = this.prefix.copy(line, 0);
      line[n++] = 48 + Math.floor(frac / 100);
      line[n++] = 48 + (Math.floor(frac / 10) % 10);
      line[n++] = 48 + (frac % 10);
      line[n++] = 0x5a; // Z
      line[n++] = 0x20;
      n += this.pool[rng.int(this.pool.length)]!.copy(line, n);
      pos += line.copy(buf, pos, 0, Math.min(n, buf.length - pos));
    }
  }
}

/**
 * Generates `totalBytes` of the realistic mix as segment files in `dir`, in blocks of 3-5 MiB
 * (64 KiB aligned, so they do not line up with the agent's 4 MiB pieces) whose kinds follow the
 * target shares closely; deterministic for a given seed. Segment i holds bytes
 * [i * 128 MiB, (i + 1) * 128 MiB) of the mix.
 */
export function generateMix(dir: string, totalBytes: number, opts: { seed?: number } = {}): MixData {
  if (totalBytes % BLOCK_ALIGN !== 0) throw new Error(`mix size must be a multiple of ${BLOCK_ALIGN}`);
  const rng = new Rng(opts.seed ?? 20240601);
  const text = new LogText(rng);
  const bytes: Record<BlockKind, number> = { random: 0, zero: 0, text: 0 };
  const segments: MixSegment[] = [];
  const segment = Buffer.alloc(Math.min(SEGMENT_BYTES, totalBytes));
  let segmentFill = 0;
  let written = 0;
  let blocks = 0;
  const flushSegment = () => {
    const index = segments.length;
    const path = join(dir, `mix-${String(index).padStart(4, "0")}.bin`);
    const fd = openSync(path, "w");
    try {
      let at = 0;
      while (at < segmentFill) at += writeSync(fd, segment, at, segmentFill - at);
    } finally {
      closeSync(fd);
    }
    segments.push({ path, offset: index * SEGMENT_BYTES, length: segmentFill });
    segmentFill = 0;
  };
  const block = Buffer.alloc(5 * MiB);
  while (written < totalBytes) {
    const size = Math.min(totalBytes - written, 3 * MiB + rng.int((2 * MiB) / BLOCK_ALIGN + 1) * BLOCK_ALIGN);
    // The kind furthest below its share (after this block) goes next, with a little randomness.
    const after = written + size;
    const deficits = (Object.keys(SHARES) as BlockKind[]).map((k) => ({ k, d: SHARES[k] * after - bytes[k] + rng.int(MiB) }));
    const kind = deficits.reduce((a, b) => (b.d > a.d ? b : a)).k;
    const piece = block.subarray(0, size);
    if (kind === "random") randomFillSync(piece);
    else if (kind === "zero") piece.fill(0);
    else text.fill(piece);
    bytes[kind] += size;
    blocks++;
    written += size;
    for (let at = 0; at < size; ) {
      const n = Math.min(size - at, segment.length - segmentFill);
      piece.copy(segment, segmentFill, at, at + n);
      segmentFill += n;
      at += n;
      if (segmentFill === segment.length) flushSegment();
    }
  }
  if (segmentFill > 0) flushSegment();
  return { totalBytes, segments, bytes, blocks };
}

/** Writes the mix into an image or NBD export with qemu-io (`format` "raw" for an NBD URI). */
export async function writeMix(target: string, mix: MixData, opts: { format: "raw" | "qcow2"; offset?: number }): Promise<void> {
  const shift = opts.offset ?? 0;
  await runTool("qemu-io", ["-f", opts.format, target, ...mix.segments.flatMap((s) => ["-c", `write -q -s ${s.path} ${s.offset + shift} ${s.length}`])]);
}

export function describeMix(mix: MixData): string {
  const pct = (k: BlockKind) => `${((100 * mix.bytes[k]) / mix.totalBytes).toFixed(1)}%`;
  return `${pct("random")} random, ${pct("zero")} zeroes, ${pct("text")} log text in ${mix.blocks} blocks of 3-5 MiB`;
}
