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

/**
 * Like raceBarrier (ledgerDomain/fixtures.ts), but armed on demand: the wrappers can fold first
 * (their folds are kept per wrapper object), and only the reads after `arm()` are held until
 * `parties` of them wait, so the racers decide on the same version from warm folds.
 */
export function armableBarrier(parties: number): { wrap(inner: EventStore): EventStore; arm(): void } {
  let waiting: Array<() => void> = [];
  let armed = false;
  return {
    arm: () => void (armed = true),
    wrap: (inner) => ({
      append: (...a) => inner.append(...a),
      readAll: (...a) => inner.readAll(...a),
      subscribe: (...a) => inner.subscribe(...a),
      streamVersion: (...a) => inner.streamVersion(...a),
      readSnapshot: (...a) => inner.readSnapshot(...a),
      writeSnapshot: (...a) => inner.writeSnapshot(...a),
      deleteSnapshots: (...a) => inner.deleteSnapshots(...a),
      close: () => inner.close(),
      async readStream(stream, opts) {
        const events = await inner.readStream(stream, opts);
        if (armed) {
          await new Promise<void>((release) => {
            waiting.push(release);
            if (waiting.length === parties) {
              armed = false;
              for (const r of waiting) r();
              waiting = [];
            }
          });
        }
        return events;
      },
    }),
  };
}
