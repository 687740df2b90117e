import { setTimeout as sleep } from "node:timers/promises";
import { silentLogger, type Logger } from "../../common/logger.js";
import type { GuestAgentClient } from "./client.js";
import { GuestAgentCommandError, GuestAgentThawError, GuestAgentUnavailableError } from "./errors.js";

export interface WithFrozenFilesystemsOptions {
  /**
   * Bounds the whole freeze (connecting, resynchronising, and guest-fsfreeze-freeze, which runs
   * the guest's fsfreeze hooks). Past it the cut-off goes ahead crash-consistent.
   */
  freezeTimeoutMs: number;
  /** Deadline of each thaw and status call. */
  thawTimeoutMs?: number;
  thawAttempts?: number;
  logger?: Logger;
}

export interface FrozenResult<T> {
  result: T;
  /** "application" only when the freeze succeeded and the thaw proved it held until fn ended. */
  consistency: "application" | "crash";
  /** Why the point is crash-consistent, when a freeze was wanted but not achieved. */
  freezeError?: Error;
  /** How long the guest was frozen, when it was. */
  frozenMs?: number;
}

type FreezeAgent = Pick<GuestAgentClient, "socketPath" | "fsfreezeFreeze" | "fsfreezeThaw" | "fsfreezeStatus">;

/**
 * Runs `fn` (the QMP cut-off transaction) with the guest's filesystems frozen, so the point is
 * application-consistent. A guest that cannot be frozen must not stop replication, so a failed or
 * timed-out freeze only downgrades the point to crash-consistent. A guest left frozen, though,
 * blocks all its writes, so whenever a freeze may have taken effect the guest is thawed in
 * `finally`, retried, and checked, and failing that is an error no caller can overlook.
 * Nothing else happens between freeze and `fn`, nor between `fn` and thaw.
 */
export async function withFrozenFilesystems<T>(agent: FreezeAgent, fn: () => Promise<T>, opts: WithFrozenFilesystemsOptions): Promise<FrozenResult<T>> {
  const logger = opts.logger ?? silentLogger;
  let freezeError: Error | undefined;
  let frozenAt: number | undefined;
  let filesystems = 0;
  try {
    filesystems = await agent.fsfreezeFreeze({ timeoutMs: opts.freezeTimeoutMs });
    frozenAt = performance.now();
  } catch (err) {
    freezeError = err instanceof Error ? err : new Error(String(err));
    logger.warn({ err, socketPath: agent.socketPath }, "guest freeze failed: the recovery point will be crash-consistent");
  }
  // A freeze that never reached the agent cannot have frozen anything; any other failure
  // (timeout, error reply, channel lost after writing) might have, or still may.
  const mayBeFrozen = !(freezeError instanceof GuestAgentUnavailableError && !freezeError.commandWritten);

  // fn's failure is captured rather than left to a `finally`, so that the thaw below always runs
  // and a thaw failure can carry fn's error with it instead of one hiding the other.
  let outcome: { ok: true; value: T } | { ok: false; error: unknown };
  try {
    outcome = { ok: true, value: await fn() };
  } catch (error) {
    outcome = { ok: false, error };
  }
  const frozenMs = frozenAt === undefined ? undefined : performance.now() - frozenAt;

  if (mayBeFrozen) {
    const thaw = await ensureThawed(agent, opts, logger, outcome.ok ? undefined : outcome.error, freezeError);
    if (thaw.error && !freezeError) {
      // The thaw did not report success, so the freeze may have ended early (Windows VSS
      // auto-thaws after 10 s and then fails the thaw): the cut-off is not provably quiesced.
      freezeError = thaw.error;
      logger.warn({ err: thaw.error }, "guest thaw failed though the guest is thawed: the recovery point is crash-consistent");
    }
  }
  if (frozenMs !== undefined) logger.info({ frozenMs: Math.round(frozenMs), filesystems }, "guest filesystems were frozen");
  if (!outcome.ok) throw outcome.error;

  const result: FrozenResult<T> = { result: outcome.value, consistency: freezeError ? "crash" : "application" };
  if (freezeError) result.freezeError = freezeError;
  if (frozenMs !== undefined) result.frozenMs = frozenMs;
  return result;
}

/**
 * Thaws, retrying; a failed thaw counts as done when the agent reports "thawed". Throws
 * GuestAgentThawError when the guest may still be frozen through us.
 */
async function ensureThawed(
  agent: FreezeAgent,
  opts: WithFrozenFilesystemsOptions,
  logger: Logger,
  operationError: unknown,
  freezeError: Error | undefined,
): Promise<{ error?: Error }> {
  const attempts = Math.max(1, opts.thawAttempts ?? 3);
  const timeoutMs = opts.thawTimeoutMs ?? 10_000;
  let lastError: unknown;
  let lastStatus: "thawed" | "frozen" | undefined;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      await agent.fsfreezeThaw({ timeoutMs });
      if (attempt > 1) logger.warn({ attempt }, "guest thaw succeeded after retrying");
      return {};
    } catch (err) {
      lastError = err;
    }
    try {
      lastStatus = await agent.fsfreezeStatus({ timeoutMs });
    } catch (err) {
      lastStatus = undefined;
      logger.warn({ err, attempt }, "guest-fsfreeze-status failed after a failed thaw");
    }
    if (lastStatus === "thawed") return { error: lastError instanceof Error ? lastError : new Error(String(lastError)) };
    logger.error({ err: lastError, attempt, attempts, status: lastStatus ?? "unknown" }, "guest thaw failed");
    if (attempt < attempts) await sleep(200 * attempt);
  }
  // The agent refused the freeze itself and QGA thaws after a failed freeze, so only a guest
  // positively reported frozen is ours to worry about then.
  if (freezeError instanceof GuestAgentCommandError && lastStatus !== "frozen") {
    return { error: lastError instanceof Error ? lastError : new Error(String(lastError)) };
  }
  throw new GuestAgentThawError(agent.socketPath, attempts, lastStatus, { cause: lastError, operationError });
}
