import { isDeepStrictEqual } from "node:util";
import type { Logger } from "../common/logger.js";
import { errorMessage } from "../common/errors.js";
import { loadSiteCredentials, type SiteCredentials } from "../transport/index.js";
import type { RetentionSpec } from "../policy/retentionPlan.js";
import type { HealthSettings } from "./health/monitor.js";
import { loadSiteConfig, type SiteConfig } from "./siteConfig.js";

/**
 * The site settings a running site reads at every use, shared by reference with the parts that
 * use them (Relationships, SitePolicies, the default retention, HealthMonitor): a reload changes
 * them in place.
 */
export interface LiveSiteSettings {
  site: { siteId: string; defaultMaxPoints: number; defaultRetention?: RetentionSpec };
  health: HealthSettings;
}

export interface SiteReload {
  /** Settings now in effect. */
  applied: string[];
  /** Settings that changed in site.json but take effect at the next start. */
  needRestart: string[];
  /** Why nothing was applied: site.json or the TLS files do not load. */
  refused?: string;
}

/** Held by the process from its start: the server's socket and identity, the ledger, storage, launcher, metrics endpoint, health timer. */
const RESTART_ONLY = [
  "siteId",
  "listen",
  "caFile",
  "certFile",
  "keyFile",
  "crlFile",
  "ledgerPath",
  "storageRoot",
  "compressionLevel",
  "accel",
  "launcher",
  "libvirtUri",
  "advertiseHost",
  "metricsListen",
] as const;

export function liveSiteSettings(config: SiteConfig): LiveSiteSettings {
  return {
    site: { siteId: config.siteId, defaultMaxPoints: config.defaultMaxPoints, ...(config.defaultRetention ? { defaultRetention: config.defaultRetention } : {}) },
    health: { ...(config.health ?? {}) },
  };
}

/**
 * SIGHUP: reads `<dir>/site.json` and the TLS files again. The retention defaults
 * (`defaultMaxPoints`, `defaultRetention`) and the health thresholds apply at once; the rest is
 * logged as needing a restart. A site.json that does not load changes nothing.
 */
export function reloadSiteConfig(
  dir: string,
  running: { config: SiteConfig; creds: SiteCredentials },
  live: LiveSiteSettings,
  logger: Logger,
  overrides: Partial<SiteConfig> = {},
): SiteReload {
  let config: SiteConfig;
  let creds: SiteCredentials;
  try {
    config = { ...loadSiteConfig(dir), ...overrides };
    creds = loadSiteCredentials({ caFile: config.caFile, certFile: config.certFile, keyFile: config.keyFile }, { logger });
  } catch (err) {
    logger.error({ err }, "reload refused: the site goes on with the configuration it has");
    return { applied: [], needRestart: [], refused: errorMessage(err) };
  }
  const result: SiteReload = { applied: [], needRestart: [] };
  for (const key of RESTART_ONLY) if (!isDeepStrictEqual(config[key], running.config[key])) result.needRestart.push(key);
  const old = running.creds;
  // The caller took renewed TLS files just before (RenewingSiteCredentials): different files here
  // only happen when they changed again in between, and the next refresh serves them.
  if (!(creds.ca.equals(old.ca) && creds.cert.equals(old.cert) && creds.key.equals(old.key))) result.applied.push("tls files (renewed certificate, at the next refresh)");
  const health = config.health ?? {};
  if ((health.evaluateEverySeconds ?? undefined) !== (live.health.evaluateEverySeconds ?? undefined)) result.needRestart.push("health.evaluateEverySeconds");

  if (live.site.defaultMaxPoints !== config.defaultMaxPoints) {
    live.site.defaultMaxPoints = config.defaultMaxPoints;
    result.applied.push("defaultMaxPoints");
  }
  if (!isDeepStrictEqual(live.site.defaultRetention, config.defaultRetention)) {
    if (config.defaultRetention) live.site.defaultRetention = config.defaultRetention;
    else delete live.site.defaultRetention;
    result.applied.push("defaultRetention");
  }
  for (const key of ["frequencySeconds", "rpoAlertSeconds", "silentAfterSeconds", "windowSeconds"] as const) {
    if (live.health[key] === health[key]) continue;
    if (health[key] === undefined) delete live.health[key];
    else live.health[key] = health[key];
    result.applied.push(`health.${key}`);
  }
  if (result.needRestart.length > 0)
    logger.warn({ settings: result.needRestart }, "reload: these take effect at the site's next start (systemctl restart); the running site keeps the old values");
  logger.info({ applied: result.applied, needRestart: result.needRestart }, "site config reloaded");
  return result;
}
