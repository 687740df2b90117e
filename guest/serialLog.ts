import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import type { QemuProcess } from "../src/qemu/processes/qemuProcess.js";
import { runTool } from "../src/qemu/processes/runTool.js";
import { GuestDiskError, GuestSerialError } from "./errors.js";
import { COUNTER_OFFSET, decodeCounterRecord, SECTOR_BYTES, type CounterRecord } from "./record.js";

/** What the counter guest printed, complete lines only (a line still being written is ignored). */
export interface SerialReport {
  /** `QREPLICA-BOOT <n>` values, one per boot logged in this file. */
  boots: number[];
  /** `QREPLICA-COUNTER <n>` values in order: per boot, the on-disk value first, then each write. */
  counters: number[];
  /** `QREPLICA-ERROR ...` lines, verbatim. */
  errors: string[];
}

const LINE = /^QREPLICA-(BOOT|COUNTER|ERROR)\s+(.*)$/;

export function parseSerialLog(text: string): SerialReport {
  const report: SerialReport = { boots: [], counters: [], errors: [] };
  const end = text.lastIndexOf("\n");
  if (end < 0) return report;
  for (const raw of text.slice(0, end).split("\n")) {
    const m = LINE.exec(raw.replace(/\r$/, ""));
    if (!m) continue;
    if (m[1] === "ERROR") report.errors.push(raw.trim());
    else if (/^\d+$/.test(m[2]!)) (m[1] === "BOOT" ? report.boots : report.counters).push(Number(m[2]));
  }
  return report;
}

/** The file's text, or "" when QEMU has not created it yet. */
export function readSerialLog(serialLogPath: string): string {
  try {
    return readFileSync(serialLogPath, "latin1");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return "";
    throw err;
  }
}

export function readSerialReport(serialLogPath: string): SerialReport {
  return parseSerialLog(readSerialLog(serialLogPath));
}

/** Every `QREPLICA-COUNTER` value printed so far, in order. */
export function readCounters(serialLogPath: string): number[] {
  return readSerialReport(serialLogPath).counters;
}

export interface WaitForCounterOptions {
  /** Fail at once, with its stderr, when this QEMU exits while we wait. */
  proc?: QemuProcess;
  pollMs?: number;
}

/**
 * Polls the serial log until a printed counter satisfies `predicate(value, allSoFar)` and returns
 * the first such value. Fails early when the guest prints `QREPLICA-ERROR` or `opts.proc` exits.
 */
export async function waitForCounter(
  serialLogPath: string,
  predicate: (value: number, all: readonly number[]) => boolean,
  timeoutMs: number,
  opts: WaitForCounterOptions = {},
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = readSerialLog(serialLogPath);
    const report = parseSerialLog(text);
    const hit = report.counters.find((v) => predicate(v, report.counters));
    if (hit !== undefined) return hit;
    const tail = () => JSON.stringify(text.slice(-300));
    if (report.errors.length > 0) throw new GuestSerialError(serialLogPath, `the guest failed: ${report.errors.join("; ")}`);
    if (opts.proc && !opts.proc.running) {
      throw new GuestSerialError(serialLogPath, `QEMU exited before the awaited counter was printed: ${opts.proc.stderr.trim()}; log tail ${tail()}`);
    }
    if (Date.now() > deadline) {
      throw new GuestSerialError(
        serialLogPath,
        `no QREPLICA-COUNTER line satisfied the condition within ${timeoutMs} ms (${report.counters.length} counters, last ${report.counters.at(-1) ?? "none"}); log tail ${tail()}`,
      );
    }
    await sleep(opts.pollMs ?? 50);
  }
}

/**
 * Reads LBA 1 of a counter disk straight from the image with `qemu-io -r -U` (no lock taken, so
 * it works on an image open in a running QEMU; the answer is exact once QEMU has exited). `null`
 * when the guest never wrote the record (it would start at 0). Follows the backing chain.
 */
export async function readDiskRecord(imagePath: string, opts: { format?: "qcow2" | "raw" } = {}): Promise<CounterRecord | null> {
  let stdout: string;
  try {
    ({ stdout } = await runTool("qemu-io", ["-r", "-U", "-f", opts.format ?? "qcow2", "-c", `read -v ${COUNTER_OFFSET} ${SECTOR_BYTES}`, imagePath]));
  } catch (err) {
    throw new GuestDiskError(imagePath, `cannot read the counter sector: ${(err as Error).message}`, { cause: err });
  }
  const sector = parseQemuIoHexdump(stdout, COUNTER_OFFSET, SECTOR_BYTES);
  if (!sector) throw new GuestDiskError(imagePath, `unexpected qemu-io output: ${stdout.slice(0, 300)}`);
  try {
    return decodeCounterRecord(sector);
  } catch (err) {
    throw new GuestDiskError(imagePath, (err as Error).message, { cause: err });
  }
}

/** The counter stored on the disk; 0 for a disk the guest never wrote. */
export async function readDiskCounter(imagePath: string, opts: { format?: "qcow2" | "raw" } = {}): Promise<number> {
  return (await readDiskRecord(imagePath, opts))?.counter ?? 0;
}

/** Parses `qemu-io read -v` lines: `%08x:  ` then 16 `%02x ` groups, then the ASCII column. */
function parseQemuIoHexdump(out: string, offset: number, length: number): Buffer | undefined {
  const buf = Buffer.alloc(length);
  let seen = 0;
  for (const line of out.split("\n")) {
    const m = /^([0-9a-f]{8}):  ((?:[0-9a-f]{2} ){1,16})/.exec(line);
    if (!m) continue;
    const at = parseInt(m[1]!, 16) - offset;
    const bytes = m[2]!
      .trim()
      .split(" ")
      .map((h) => parseInt(h, 16));
    if (at < 0 || at + bytes.length > length) return undefined;
    buf.set(bytes, at);
    seen += bytes.length;
  }
  return seen === length ? buf : undefined;
}
