/**
 * Long relationship histories made by the real commands (decided and folded in memory, then
 * appended in batches), for the tests and benchmarks of a ledger that has aged: a year of 30 s
 * cycles is millions of events, far too many to push through executeCommand one by one.
 */
import {
  commitCycle,
  completeMerge,
  enableReplication,
  encodeRelationshipEvent,
  evolve,
  failCycle,
  initialRelationshipState,
  pause,
  relationshipStream,
  resume,
  startInitialReplication,
  startMerge,
  startTestFailover,
  stopTestFailover,
  type Decide,
  type EventStore,
  type NewEvent,
  type RelationshipState,
} from "../../src/ledger/index.js";
import { DISK_IDS, baseImage, cutoff, cycleInput, enableInput } from "../unit/ledgerDomain/fixtures.js";

/**
 * Enable, initial replication, then incremental cycles with retention merges (about four events
 * per cycle), and now and then a failed cycle, a pause and resume, a test failover: until the
 * stream holds at least `events` events. Returns the encoded events and the state they fold to.
 */
export function relationshipHistory(vmId: string, events: number, opts: { maxPoints?: number } = {}): { events: NewEvent[]; state: RelationshipState } {
  const out: NewEvent[] = [];
  let s = initialRelationshipState(vmId);
  const run = (decide: Decide): void => {
    for (const e of decide(s)) {
      s = evolve(s, e);
      out.push(encodeRelationshipEvent(e, { actor: "history" }));
    }
  };
  run((x) => enableReplication(x, enableInput({ retention: { maxPoints: opts.maxPoints ?? 4 } })));
  run((x) => startInitialReplication(x, { cycleSeq: 1, cutoffAt: cutoff(1), generation: 1 }));
  run((x) => commitCycle(x, cycleInput(vmId, 1, "full")));
  for (let seq = 2; out.length < events; seq++) {
    if (seq % 97 === 0) {
      run((x) => failCycle(x, { cycleSeq: seq, generation: 1, reason: "NBD_READ_FAILED", message: "EIO" }));
      continue;
    }
    if (seq % 251 === 0) {
      run((x) => pause(x, { reason: "maintenance" }));
      run((x) => resume(x));
    }
    if (seq % 503 === 0) {
      run((x) => startTestFailover(x, { testId: `t${seq}`, startedAt: cutoff(seq) }));
      run((x) => stopTestFailover(x, { testId: `t${seq}`, stoppedAt: cutoff(seq) }));
    }
    run((x) => commitCycle(x, cycleInput(vmId, seq)));
    for (;;) {
      const started = startMerge(s);
      const merge = started[0];
      if (merge?.type !== "RecoveryPointMergeStarted") break;
      run(() => started);
      run((x) => completeMerge(x, { pointId: merge.data.pointId, disks: DISK_IDS.map((diskId) => ({ diskId, imagePath: baseImage(vmId, diskId) })) }));
    }
  }
  return { events: out, state: s };
}

/** Appends a history to the VM's stream in batches (one transaction each). */
export async function appendHistory(store: EventStore, vmId: string, events: readonly NewEvent[], batch = 2000): Promise<void> {
  const stream = relationshipStream(vmId);
  let version = await store.streamVersion(stream);
  for (let i = 0; i < events.length; i += batch) {
    const r = await store.append(stream, events.slice(i, i + batch), version ?? "no_stream");
    version = r.nextExpectedVersion;
  }
}
