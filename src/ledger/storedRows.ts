/**
 * Decoding of stored event rows shared by the server-backed adapters (PostgreSQL, KurrentDB):
 * data and metadata are kept as the canonical JSON text that was hashed, recorded_at as the exact
 * ISO string that was hashed, so a row reads back to precisely what the chain covers.
 */
import { LedgerCorruptError } from "./errors.js";
import type { RecordedEvent } from "./eventStore.js";
import type { ChainRow } from "./hashChain.js";

export interface StoredEventRow {
  globalPosition: bigint;
  stream: string;
  version: bigint;
  type: string;
  data: string;
  metadata: string;
  recordedAt: string;
  hash: string;
  previousHash: string;
}

export function tryParseObject(text: string): { value: Record<string, unknown> } | { problem: string; cause?: unknown } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    return { problem: "is not valid JSON", cause };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return { problem: "is not a JSON object" };
  return { value: value as Record<string, unknown> };
}

/** Throws LedgerCorruptError naming the row rather than guess at an undecodable one. */
export function decodeStoredEvent(row: StoredEventRow, where: string): RecordedEvent {
  const parse = (column: "data" | "metadata"): Record<string, unknown> => {
    const parsed = tryParseObject(row[column]);
    if ("problem" in parsed) {
      throw new LedgerCorruptError(
        `Ledger event at global position ${row.globalPosition} (stream "${row.stream}" version ${row.version}) in ${where} ` +
          `is unreadable: ${column} ${parsed.problem}; run \`qreplica ledger verify\``,
        row.globalPosition,
        { cause: parsed.cause },
      );
    }
    return parsed.value;
  };
  return {
    stream: row.stream,
    version: row.version,
    globalPosition: row.globalPosition,
    type: row.type,
    data: parse("data"),
    metadata: parse("metadata"),
    recordedAt: new Date(row.recordedAt),
    hash: row.hash,
    previousHash: row.previousHash,
  };
}

/** For verification: an undecodable row is returned marked, so the walk goes on and names it. */
export function chainRowOf(row: StoredEventRow): ChainRow {
  const base = {
    stream: row.stream,
    version: row.version,
    globalPosition: row.globalPosition,
    type: row.type,
    recordedAt: row.recordedAt,
    hash: row.hash,
    previousHash: row.previousHash,
  };
  const data = tryParseObject(row.data);
  const metadata = tryParseObject(row.metadata);
  if ("problem" in data) return { ...base, data: {}, metadata: {}, unreadable: `data ${data.problem}` };
  if ("problem" in metadata) return { ...base, data: {}, metadata: {}, unreadable: `metadata ${metadata.problem}` };
  return { ...base, data: data.value, metadata: metadata.value };
}
