import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { getSqliteEventStore, RELATIONSHIP_STREAM_PREFIX } from "../../src/ledger/index.js";
import type { Daemon } from "../../test/helpers/processes.js";
import type { CommittedCycle } from "./replicateMix.js";

/** Every CycleCommitted of `vmId` in a site's ledger, oldest first (none before the ledger exists). */
export async function committedCycles(siteDir: string, vmId: string): Promise<CommittedCycle[]> {
  const path = join(siteDir, "ledger.sqlite");
  if (!existsSync(path)) return [];
  const store = getSqliteEventStore({ path, create: false });
  try {
    const events = await store.readStream(`${RELATIONSHIP_STREAM_PREFIX}${vmId}`);
    return events.filter((e) => e.type === "CycleCommitted").map((e) => e.data as unknown as CommittedCycle);
  } finally {
    await store.close();
  }
}

/** committedAt - cutoffAt of a cycle, in ms: from the agent's cut-off to the durable point on the replica. */
export const cutoffToCommitMs = (c: CommittedCycle): number => Date.parse(c.committedAt) - Date.parse(c.cutoffAt);

export function logTail(file: string, lines = 15): string {
  try {
    return readFileSync(file, "utf8").trim().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/**
 * Polls `probe` until it returns a value; fails early, with the log tails, when one of `daemons`
 * has exited, and after `timeoutMs`.
 */
export async function waitAlive<T>(what: string, daemons: Daemon[], logs: string[], probe: () => Promise<T | undefined>, timeoutMs: number, pollMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  const tails = () => logs.map((l) => `${l}:\n${logTail(l)}`).join("\n");
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    const dead = daemons.find((d) => d.child.exitCode !== null || d.child.signalCode !== null);
    if (dead) throw new Error(`a qreplica process exited while waiting for ${what}\n${tails()}`);
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}\n${tails()}`);
    await sleep(pollMs);
  }
}
