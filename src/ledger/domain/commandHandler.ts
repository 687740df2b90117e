/**
 * Runs a decision against the ledger: load, fold, decide, append with the version that was read.
 * Concurrent operators (or a scheduler racing an operator) are settled by optimistic
 * concurrency: the loser re-reads and decides again on the new state, which either yields a
 * compatible decision that is appended, or a refusal from the command itself.
 */
import type { EventStore } from "../eventStore.js";
import { isWrongExpectedVersionError } from "../errors.js";
import { InvalidCommandInputError } from "./errors.js";
import { decodeRelationshipEvent, encodeRelationshipEvent, relationshipStream, type RelationshipEvent } from "./events.js";
import { evolve, type RelationshipState } from "./relationship.js";
import { loadCachedFold } from "./relationshipCache.js";

export interface LoadedRelationship {
  readonly state: RelationshipState;
  /** Version of the last event folded; `undefined` while the stream does not exist. */
  readonly version: bigint | undefined;
}

/** A decision: pure, from the current state to the events to append (none is a valid answer). */
export type Decide = (state: RelationshipState) => readonly RelationshipEvent[];

export interface ExecuteCommandOptions {
  /** Re-decisions after a concurrency conflict, beyond the first attempt (default 5). */
  maxRetries?: number;
  /**
   * Stored with every appended event, e.g. `{ actor, correlationId }`. A function is given the
   * state the decision is made on (re-read after a conflict), for metadata that depends on it,
   * such as who approved what the command does: a value computed before the command would miss an
   * event that landed in between.
   */
  metadata?: Record<string, unknown> | ((state: RelationshipState) => Record<string, unknown> | undefined);
}

export interface CommandResult {
  /** What was appended; empty when the decision was that nothing needs recording. */
  readonly events: readonly RelationshipEvent[];
  readonly newState: RelationshipState;
  readonly version: bigint | undefined;
  /** 1 when no conflict occurred. */
  readonly attempts: number;
}

const DEFAULT_MAX_RETRIES = 5;

/**
 * Folds the stream. Given an earlier result for the same VM, reads only the events after it:
 * a stream is append-only, so the earlier fold is still a valid prefix. Without one, starts from
 * this process's fold or the stored snapshot (relationshipCache.ts), so the cost does not grow
 * with the stream's age.
 */
export async function loadRelationship(store: EventStore, vmId: string, known?: LoadedRelationship): Promise<LoadedRelationship> {
  if (!known) {
    const fold = await loadCachedFold(store, vmId);
    return { state: fold.state, version: fold.version };
  }
  if (known.state.vmId !== vmId) {
    throw new InvalidCommandInputError(`loadRelationship: a fold of VM ${known.state.vmId} cannot continue as VM ${vmId}`);
  }
  const stream = relationshipStream(vmId);
  const fromVersion = known.version === undefined ? 0n : known.version + 1n;
  const recorded = await store.readStream(stream, { fromVersion });
  let state = known.state;
  let version = known.version;
  for (const r of recorded) {
    state = evolve(state, decodeRelationshipEvent(r));
    version = r.version;
  }
  return { state, version };
}

export async function executeCommand(store: EventStore, vmId: string, decide: Decide, opts: ExecuteCommandOptions = {}): Promise<CommandResult> {
  const maxRetries = opts.maxRetries ?? DEFAULT_MAX_RETRIES;
  if (!Number.isSafeInteger(maxRetries) || maxRetries < 0) {
    throw new InvalidCommandInputError(`executeCommand: maxRetries must be an integer >= 0, got ${maxRetries}`);
  }
  const stream = relationshipStream(vmId);
  for (let attempt = 1; ; attempt++) {
    // After a conflict this reads only what the other writer appended since.
    const loaded = await loadRelationship(store, vmId);
    const events = decide(loaded.state);
    if (events.length === 0) return { events: [], newState: loaded.state, version: loaded.version, attempts: attempt };
    // Encode before appending so an unknown event type fails without touching the ledger.
    const metadata = typeof opts.metadata === "function" ? opts.metadata(loaded.state) : opts.metadata;
    const encoded = events.map((e) => encodeRelationshipEvent(e, metadata));
    try {
      const result = await store.append(stream, encoded, loaded.version ?? "no_stream");
      const newState = events.reduce(evolve, loaded.state);
      return { events, newState, version: result.nextExpectedVersion, attempts: attempt };
    } catch (err) {
      if (!isWrongExpectedVersionError(err) || attempt > maxRetries) throw err;
      // Someone else appended since the read: re-read from where we were and decide again.
    }
  }
}
