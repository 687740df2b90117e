import { DEFAULT_POLICY_NAME, DEFAULTS, defaultRpoAlertSeconds } from "./schema.js";
import type { ReplicationPolicy } from "./types.js";

/**
 * What a VM bound to no policy replicates under: today's behaviour before policies. Its frequency
 * and compression are the agent config's (`intervalSeconds`, `compressionLevel`), as its Hello
 * reports them; its retention is the site's `defaultMaxPoints` newest points.
 */
export function defaultPolicy(opts: { maxPoints: number; intervalSeconds?: number; compressionLevel?: number; resync?: "automatic" | "manual" }): ReplicationPolicy {
  const seconds = opts.intervalSeconds && opts.intervalSeconds > 0 ? opts.intervalSeconds : DEFAULTS.frequencySeconds;
  return {
    name: DEFAULT_POLICY_NAME,
    description: "built in: the agent config's interval and compression, the site's default point count",
    frequency: { kind: "interval", seconds },
    retention: { tiers: [], minPoints: opts.maxPoints },
    compressionLevel: opts.compressionLevel && opts.compressionLevel >= 1 ? opts.compressionLevel : DEFAULTS.compressionLevel,
    bandwidth: [],
    initialReplication: { kind: "now" },
    resync: { mode: opts.resync ?? "automatic" },
    rpoAlertSeconds: defaultRpoAlertSeconds(seconds),
  };
}
