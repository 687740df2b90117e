/**
 * The port through which a runbook run is recorded: its own stream in the replica site's ledger.
 * The runbook knows no ledger and no transport; the CLI plugs in the site's control plane
 * (src/cli/runbook/controlPlaneRunLog.ts) and tests plug in an in-memory event store. Any
 * ledger EventStore satisfies this shape.
 */

/** Optimistic concurrency: the version last read, or "no_stream" for a new run, or "any". */
export type RunLogExpectedVersion = bigint | "no_stream" | "any";
export const RUN_LOG_NO_STREAM = "no_stream" satisfies RunLogExpectedVersion;

export interface RunLogNewEvent {
  type: string;
  data: Record<string, unknown>;
  metadata?: Record<string, unknown>;
}

export interface RunLogRecordedEvent {
  readonly version: bigint;
  readonly type: string;
  readonly data: Record<string, unknown>;
  readonly metadata: Record<string, unknown>;
  readonly recordedAt: Date;
}

export interface RunLogStore {
  append(stream: string, events: RunLogNewEvent[], expectedVersion: RunLogExpectedVersion): Promise<{ nextExpectedVersion: bigint }>;
  readStream(stream: string, opts?: { fromVersion?: bigint; maxCount?: number }): Promise<readonly RunLogRecordedEvent[]>;
}
