/**
 * The one rule for storing already-sealed events (ledger migrate): an event is stored only where
 * it continues its stream's chain, and only if its hash still matches its content, so a copy can
 * never hold a chain the source did not.
 */
import { LedgerIntegrityError } from "./errors.js";
import type { RecordedEvent } from "./eventStore.js";
import { canonicalJson, computeEventHash } from "./hashChain.js";

export interface VerbatimRow {
  dataJson: string;
  metadataJson: string;
  recordedAt: string;
}

export function assertContinuesChain(e: RecordedEvent, head: { version: bigint | undefined; hash: string }): VerbatimRow {
  const expectedVersion = head.version === undefined ? 0n : head.version + 1n;
  const recordedAt = e.recordedAt.toISOString();
  const problem =
    e.version !== expectedVersion
      ? `version ${e.version} does not follow the destination's head (expected ${expectedVersion})`
      : e.previousHash !== head.hash
        ? "previousHash does not match the destination stream's head"
        : computeEventHash(e.previousHash, { ...e, recordedAt }) !== e.hash
          ? "stored hash does not match its content"
          : undefined;
  if (problem) throw new LedgerIntegrityError([{ stream: e.stream, version: e.version, globalPosition: e.globalPosition, reason: problem }]);
  return { dataJson: canonicalJson(e.data), metadataJson: canonicalJson(e.metadata), recordedAt };
}
