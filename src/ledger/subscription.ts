/**
 * The catch-up-then-live loop shared by the adapters. It only ever reads by global position after
 * its checkpoint, so "live" is the same query as "catch-up": a notification merely says "read
 * again now". That is what makes delivery gap-free and duplicate-free whatever the timing of
 * appends relative to the switch from catch-up to live.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import type { EventEmitter } from "node:events";
import { LedgerClosedError } from "./errors.js";
import type { EventHandler, ReadAllOptions, RecordedEvent, SubscribeOptions, Subscription } from "./eventStore.js";

export interface SubscriptionSource {
  readPage(opts: ReadAllOptions & { maxCount: number }): RecordedEvent[] | Promise<RecordedEvent[]>;
  /** Calls `wake` whenever something may have been appended; returns the unregister function. */
  onChange(wake: () => void): () => void;
  /** Re-read at this interval even without a notification (appends by other processes). */
  pollIntervalMs?: number;
  pageSize?: number;
}

// Lets close() tell whether it is being called from inside this subscription's own handler, where
// waiting for the handler to finish would wait on itself.
const insideHandler = new AsyncLocalStorage<object>();

export function startSubscription(source: SubscriptionSource, opts: SubscribeOptions, handler: EventHandler): Subscription {
  const pageSize = source.pageSize ?? 500;
  const self = {};
  let checkpoint = opts.fromPosition;
  let stopping = false;
  let dirty = true;
  let sleeper: (() => void) | undefined;

  const caughtUp = deferred();
  const closed = deferred();

  const wake = (): void => {
    dirty = true;
    const s = sleeper;
    sleeper = undefined;
    s?.();
  };
  const unregister = source.onChange(wake);
  const timer = source.pollIntervalMs ? setInterval(wake, source.pollIntervalMs) : undefined;
  timer?.unref();

  const run = async (): Promise<void> => {
    let isCaughtUp = false;
    while (!stopping) {
      dirty = false;
      const page = await source.readPage({ fromPosition: checkpoint, maxCount: pageSize, streamPrefix: opts.streamPrefix });
      for (const event of page) {
        if (stopping) return;
        await insideHandler.run(self, () => handler(event));
        checkpoint = event.globalPosition;
      }
      if (page.length < pageSize) {
        if (!isCaughtUp) {
          isCaughtUp = true;
          caughtUp.resolve();
        }
        if (!dirty && !stopping) await new Promise<void>((resolve) => (sleeper = resolve));
      }
    }
  };

  const finished = run().then(
    () => {
      stop();
      caughtUp.reject(new LedgerClosedError("subscription closed before it caught up"));
      closed.resolve();
    },
    (err: unknown) => {
      stop();
      caughtUp.reject(err);
      closed.reject(err);
    },
  );

  function stop(): void {
    stopping = true;
    unregister();
    if (timer) clearInterval(timer);
  }

  return {
    caughtUp: caughtUp.promise,
    closed: closed.promise,
    async close() {
      stopping = true;
      wake();
      if (insideHandler.getStore() === self) return;
      await finished;
    },
  };
}

/**
 * The subscriptions one store has open: each re-reads when `wakeups` emits `event` (an append by
 * this process, a database notification) or its poll interval passes, and all close with the store.
 */
export class OpenSubscriptions {
  private readonly open = new Set<Subscription>();

  constructor(
    private readonly source: Omit<SubscriptionSource, "onChange">,
    private readonly wakeups: EventEmitter,
    private readonly event: string,
  ) {}

  start(opts: SubscribeOptions, handler: EventHandler): Subscription {
    const { wakeups, event } = this;
    const sub = startSubscription(
      {
        ...this.source,
        onChange(wake) {
          wakeups.on(event, wake);
          return () => wakeups.off(event, wake);
        },
      },
      opts,
      handler,
    );
    this.open.add(sub);
    void sub.closed.finally(() => this.open.delete(sub)).catch(() => undefined);
    return sub;
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.open].map((s) => s.close()));
  }
}

interface Deferred {
  promise: Promise<void>;
  resolve(): void;
  reject(err: unknown): void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A subscription's caller may never look at `caughtUp` or `closed`; their rejection must not
  // crash the process as an unhandled rejection. Callers who do await them still see the error.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}
