/**
 * Per-stream hash chain: each event's hash covers its content and the previous event's hash, so
 * editing, reordering or removing an event in the middle of a stream breaks every later link.
 *
 *   hash = sha256_hex(previousHash + canonicalJson({ stream, version, type, data, metadata, recordedAt }))
 *
 * with `version` as a decimal string, `recordedAt` as an ISO-8601 UTC string with milliseconds
 * (Date#toISOString), and GENESIS_HASH as the previousHash of version 0.
 *
 * Limits, on purpose: the chain is unkeyed, so someone able to rewrite the file can also recompute
 * every hash, and removing a stream's *last* events leaves a valid shorter chain. It detects
 * corruption and naive edits; anchoring stream heads elsewhere is what would catch the rest.
 */
import { createHash } from "node:crypto";
import { LedgerArgumentError, type LedgerProblem } from "./errors.js";

export const GENESIS_HASH = "0".repeat(64);

/**
 * JSON with object keys sorted (by UTF-16 code unit, i.e. Array#sort's default) at every depth.
 * Only plain JSON values are accepted; anything JSON.stringify would coerce or drop lossily
 * (bigint, Date, Map, NaN, Infinity, undefined in an array, functions, class instances) is
 * refused with the path of the offending value, because its stored form would not hash back to
 * the same thing after a round trip. bigint in particular has no JSON form: encode it as a string.
 * Object properties set to `undefined` are omitted, matching JSON.stringify.
 */
export function canonicalJson(value: unknown, path = "$"): string {
  switch (typeof value) {
    case "string":
    case "boolean":
      return JSON.stringify(value);
    case "number":
      if (!Number.isFinite(value)) throw notJson(path, String(value));
      return JSON.stringify(value);
    case "bigint":
      throw notJson(path, "a bigint (encode it as a decimal string)");
    case "object": {
      if (value === null) return "null";
      if (Array.isArray(value)) {
        const items: string[] = [];
        for (let i = 0; i < value.length; i++) {
          if (value[i] === undefined) throw notJson(`${path}[${i}]`, "undefined");
          items.push(canonicalJson(value[i], `${path}[${i}]`));
        }
        return `[${items.join(",")}]`;
      }
      const proto = Object.getPrototypeOf(value) as unknown;
      if (proto !== Object.prototype && proto !== null) {
        throw notJson(path, `a ${(value as object).constructor?.name ?? "non-plain"} object`);
      }
      const record = value as Record<string, unknown>;
      const members: string[] = [];
      for (const key of Object.keys(record).sort()) {
        const v = record[key];
        if (v === undefined) continue;
        members.push(`${JSON.stringify(key)}:${canonicalJson(v, `${path}.${key}`)}`);
      }
      return `{${members.join(",")}}`;
    }
    default:
      throw notJson(path, typeof value);
  }
}

function notJson(path: string, what: string): LedgerArgumentError {
  return new LedgerArgumentError(`${path} is ${what}; ledger events hold plain JSON only`);
}

/** The hashed fields of an event, as stored. */
export interface HashInput {
  stream: string;
  version: bigint;
  type: string;
  data: Record<string, unknown>;
  metadata: Record<string, unknown>;
  /** ISO string exactly as stored; pass `date.toISOString()` for a Date. */
  recordedAt: string;
}

export function computeEventHash(previousHash: string, e: HashInput): string {
  const body = canonicalJson({
    stream: e.stream,
    version: e.version.toString(),
    type: e.type,
    data: e.data,
    metadata: e.metadata,
    recordedAt: e.recordedAt,
  });
  return createHash("sha256").update(previousHash).update(body).digest("hex");
}

/** An event ready to store: normalised JSON (text and detached object) plus its chain links. */
export interface SealedEvent extends HashInput {
  dataJson: string;
  metadataJson: string;
  hash: string;
  previousHash: string;
}

/**
 * Gives a batch its versions and hashes, continuing from the stream's current head. Data is
 * normalised through canonical JSON first, so what is hashed is exactly what reads will return.
 */
export function sealEvents(
  stream: string,
  events: readonly { type: string; data: Record<string, unknown>; metadata?: Record<string, unknown> }[],
  head: { version: bigint | undefined; hash: string },
  recordedAt: Date,
): SealedEvent[] {
  const at = recordedAt.toISOString();
  let previousHash = head.hash;
  let version = head.version ?? -1n;
  return events.map((e, i) => {
    const dataJson = canonicalJson(e.data, `events[${i}].data`);
    const metadataJson = canonicalJson(e.metadata ?? {}, `events[${i}].metadata`);
    version += 1n;
    const input: HashInput = {
      stream,
      version,
      type: e.type,
      data: JSON.parse(dataJson) as Record<string, unknown>,
      metadata: JSON.parse(metadataJson) as Record<string, unknown>,
      recordedAt: at,
    };
    const hash = computeEventHash(previousHash, input);
    const sealed = { ...input, dataJson, metadataJson, hash, previousHash };
    previousHash = hash;
    return sealed;
  });
}

/** A stored event as the verifier sees it; `unreadable` is set when the row could not be decoded. */
export interface ChainRow extends HashInput {
  globalPosition: bigint;
  hash: string;
  previousHash: string;
  unreadable?: string;
}

export interface VerifyReport {
  ok: boolean;
  streams: number;
  events: number;
  /** At most one per stream: its first broken link; later links depend on it and add nothing. */
  problems: LedgerProblem[];
}

/**
 * Checks rows fed in global order. Kept free of I/O so every adapter (and a raw SQLite file) can
 * be verified by the same rules.
 */
export class ChainVerifier {
  private readonly heads = new Map<string, { nextVersion: bigint; lastHash: string; broken: boolean }>();
  private readonly problems: LedgerProblem[] = [];
  private events = 0;

  add(row: ChainRow): void {
    this.events++;
    let head = this.heads.get(row.stream);
    if (!head) {
      head = { nextVersion: 0n, lastHash: GENESIS_HASH, broken: false };
      this.heads.set(row.stream, head);
    }
    if (head.broken) return;
    const reason = this.check(row, head.nextVersion, head.lastHash);
    if (reason) {
      head.broken = true;
      this.problems.push({ stream: row.stream, version: row.version, globalPosition: row.globalPosition, reason });
      return;
    }
    head.nextVersion = row.version + 1n;
    head.lastHash = row.hash;
  }

  report(): VerifyReport {
    return { ok: this.problems.length === 0, streams: this.heads.size, events: this.events, problems: [...this.problems] };
  }

  private check(row: ChainRow, expectedVersion: bigint, expectedPrevious: string): string | undefined {
    if (row.unreadable) return row.unreadable;
    if (row.version !== expectedVersion) {
      return row.version > expectedVersion
        ? `version ${expectedVersion}${row.version - 1n > expectedVersion ? `..${row.version - 1n}` : ""} missing before version ${row.version}`
        : `version ${row.version} out of order (expected ${expectedVersion})`;
    }
    if (row.previousHash !== expectedPrevious) {
      return `previousHash ${short(row.previousHash)} does not match the hash of the event before it (${short(expectedPrevious)})`;
    }
    let actual: string;
    try {
      actual = computeEventHash(row.previousHash, row);
    } catch (err) {
      return `content cannot be hashed: ${(err as Error).message}`;
    }
    if (actual !== row.hash) {
      return `stored hash ${short(row.hash)} does not match its content (recomputed ${short(actual)}): event was modified`;
    }
    return undefined;
  }
}

function short(hash: string): string {
  return hash.length > 12 ? `${hash.slice(0, 12)}…` : JSON.stringify(hash);
}
