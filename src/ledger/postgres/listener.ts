import type { EventEmitter } from "node:events";
import pg from "pg";
import type { Logger } from "../../common/logger.js";
import { errorMessage } from "../../common/errors.js";

/**
 * A dedicated connection for LISTEN. When it is lost (server restart, idle timeout) it is opened
 * again with backoff, and a wake is sent on every (re)connection so nothing appended while it was
 * down waits for the poll; meanwhile subscriptions go on by polling.
 */
export interface Listener {
  stop(): Promise<void>;
}

export async function listen(options: { url: string; channel: string; appended: EventEmitter; location: string; logger?: Logger }): Promise<Listener> {
  const { channel, appended, location } = options;
  let client: pg.Client | undefined;
  let stopped = false;
  let retry: NodeJS.Timeout | undefined;
  let delay = 250;
  const connect = async (): Promise<void> => {
    const c = new pg.Client({ connectionString: options.url });
    c.on("notification", () => appended.emit("appended"));
    c.on("error", (err) => lost(c, err));
    c.on("end", () => lost(c, new Error("connection ended")));
    try {
      await c.connect();
      await c.query(`LISTEN ${channel}`);
    } catch (err) {
      lost(c, err);
      return;
    }
    if (stopped) return void (await c.end().catch(() => undefined));
    client = c;
    delay = 250;
    appended.emit("appended");
  };
  const dead = new WeakSet<pg.Client>();
  const lost = (c: pg.Client, err: unknown): void => {
    // A lost connection reports itself more than once (error, then end): act on the first.
    if (stopped || dead.has(c)) return;
    dead.add(c);
    client = undefined;
    void c.end().catch(() => undefined);
    if (retry) return;
    options.logger?.warn({ ledger: location, err: errorMessage(err), retryInMs: delay }, "ledger notifications lost: subscriptions poll until they are back");
    retry = setTimeout(() => {
      retry = undefined;
      void connect();
    }, delay);
    retry.unref();
    delay = Math.min(delay * 2, 10_000);
  };
  await connect();
  return {
    async stop() {
      stopped = true;
      if (retry) clearTimeout(retry);
      await client?.end().catch(() => undefined);
    },
  };
}
