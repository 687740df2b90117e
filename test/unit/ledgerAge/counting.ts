/** An EventStore wrapper that counts what a caller reads: the cost of a load, independent of timing. */
import type { EventStore } from "../../../src/ledger/index.js";

export interface CountingStore extends EventStore {
  readonly eventsRead: number;
  readonly snapshotReads: number;
  reset(): void;
}

/** A new wrapper is a new store object, so the per-store folds start empty, as in a new process. */
export function counting(inner: EventStore): CountingStore {
  let eventsRead = 0;
  let snapshotReads = 0;
  return {
    get eventsRead() {
      return eventsRead;
    },
    get snapshotReads() {
      return snapshotReads;
    },
    reset() {
      eventsRead = 0;
      snapshotReads = 0;
    },
    append: (...a) => inner.append(...a),
    subscribe: (...a) => inner.subscribe(...a),
    streamVersion: (...a) => inner.streamVersion(...a),
    writeSnapshot: (...a) => inner.writeSnapshot(...a),
    deleteSnapshots: (...a) => inner.deleteSnapshots(...a),
    close: () => inner.close(),
    async readStream(stream, opts) {
      const r = await inner.readStream(stream, opts);
      eventsRead += r.length;
      return r;
    },
    async readAll(opts) {
      const r = await inner.readAll(opts);
      eventsRead += r.length;
      return r;
    },
    async readSnapshot(key) {
      snapshotReads++;
      return inner.readSnapshot(key);
    },
  };
}

export { armableBarrier } from "../ledgerDomain/fixtures.js";
