import { unary } from "../siteClient.js";
import type { ControlServiceClient } from "../../gen/qreplica/v1/control.js";
import type { AppendResult, ExpectedVersion, NewEvent, ReadStreamOptions, RecordedEvent } from "../../ledger/index.js";
import { RUNBOOK_STREAM_PREFIX, type RunLogStore } from "../../runbook/index.js";

function runIdOf(stream: string): string {
  if (!stream.startsWith(RUNBOOK_STREAM_PREFIX)) throw new Error(`'${stream}' is not a runbook stream: the control plane records runbook runs only`);
  return stream.slice(RUNBOOK_STREAM_PREFIX.length);
}

function wireExpected(v: ExpectedVersion): bigint {
  if (v === "no_stream") return -1n;
  if (v === "any") return -2n;
  if (v === "stream_exists") throw new Error("a runbook run is appended with the version last read, never 'stream_exists'");
  return v;
}

/**
 * A run's record kept in the replica site's ledger through its control plane
 * (AppendRunbookEvents: role operator; ReadRunbookRun: role viewer), so that the CLI never opens
 * the site's SQLite file and every record names who made it.
 */
export class ControlPlaneRunLog implements RunLogStore {
  constructor(private readonly client: ControlServiceClient) {}

  async append(stream: string, events: NewEvent[], expectedVersion: ExpectedVersion): Promise<AppendResult> {
    const r = await unary(this.client, this.client.appendRunbookEvents, {
      runId: runIdOf(stream),
      events: events.map((e) => ({ type: e.type, dataJson: JSON.stringify(e.data) })),
      expectedVersion: wireExpected(expectedVersion),
    });
    return { nextExpectedVersion: r.nextExpectedVersion, lastGlobalPosition: 0n };
  }

  async readStream(stream: string, opts: ReadStreamOptions = {}): Promise<RecordedEvent[]> {
    const r = await unary(this.client, this.client.readRunbookRun, { runId: runIdOf(stream) });
    const from = opts.fromVersion ?? 0n;
    const events = r.events
      .filter((e) => e.streamVersion >= from)
      .map(
        (e): RecordedEvent => ({
          stream: e.stream,
          version: e.streamVersion,
          globalPosition: e.globalPosition,
          type: e.type,
          data: JSON.parse(e.dataJson) as Record<string, unknown>,
          metadata: e.actor ? { actor: e.actor, actorRole: e.actorRole } : {},
          recordedAt: e.recordedAt ?? new Date(0),
          // The chain is verified on the site ('qreplica ledger verify'); the wire carries no hashes.
          hash: "",
          previousHash: "",
        }),
      );
    return opts.maxCount === undefined ? events : events.slice(0, opts.maxCount);
  }
}
