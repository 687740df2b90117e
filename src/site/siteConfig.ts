import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import { parseLedgerConfig, type LedgerConfig } from "../ledger/ledgerConfig.js";
import { retentionSpecProblems, type RetentionSpec } from "../policy/retentionPlan.js";
import type { RetentionTier } from "../policy/types.js";
import { SiteConfigError } from "./errors.js";
import type { HealthSettings } from "./health/monitor.js";

/** `<dir>/site.json`: who the site is, where it listens, its identity files. */
export interface SiteConfig {
  siteId: string;
  /** host:port of the gRPC server; port 0 picks a free one (written to run/site.address). */
  listen: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  /**
   * The deployment CA's revocation list (`qreplica pki crl` writes it on the CA host). Peers whose
   * certificate it lists are refused at Hello and on every control call; the file is read again
   * when it changes. Absent: no revocation checking.
   */
  crlFile?: string;
  /** The SQLite ledger file; used only when `ledger` is absent or sqlite. */
  ledgerPath: string;
  /** Which store holds the ledger (see src/ledger/ledgerConfig.ts); absent means SQLite at ledgerPath. */
  ledger?: LedgerConfig;
  storageRoot: string;
  /** Recovery points kept per VM before the oldest is merged into the base. */
  defaultMaxPoints: number;
  /**
   * Retention tiers for every VM without a policy of its own (see src/policy/retentionPlan.ts).
   * Absent: the `defaultMaxPoints` newest points, as before tiers existed.
   */
  defaultRetention?: RetentionSpec;
  compressionLevel?: number;
  /** Accelerator for VMs this site launches (failover, tests): auto = KVM when usable. */
  accel: "auto" | "kvm" | "tcg";
  /**
   * The host agents and operators dial (the first `site init --san`): written to run/site.address
   * when `listen` is a wildcard (0.0.0.0, ::), which nobody can dial. 127.0.0.1 when absent.
   */
  advertiseHost?: string;
  /**
   * host:port of the Prometheus /metrics endpoint (plain HTTP, no authentication): absent means
   * off. Keep it on loopback; `site serve --metrics-listen` overrides it.
   */
  metricsListen?: string;
  /** Health thresholds and evaluation interval (see site/health/monitor.ts). */
  health?: HealthSettings;
}

export const siteFile = (dir: string) => join(dir, "site.json");
/** Where authorization entries lived before the ledger held them; imported once at start (authorizations.ts). */
export const authorizationsFile = (dir: string) => join(dir, "authorizations.json");
/** Files `tls/admin.crt` and `tls/admin.key`: the site's local admin identity (role admin), made by `site init`. */
export const ADMIN_CERT_NAME = "admin";
export const adminCredentialFiles = (dir: string) => ({ certFile: join(dir, "tls", `${ADMIN_CERT_NAME}.crt`), keyFile: join(dir, "tls", `${ADMIN_CERT_NAME}.key`) });
export const runDir = (dir: string) => join(dir, "run");
export const addressFile = (dir: string) => join(runDir(dir), "site.address");

export function loadSiteConfig(dir: string): SiteConfig {
  const path = siteFile(dir);
  if (!existsSync(path)) throw new SiteConfigError(path, `not a site directory: run 'qreplica site init --dir ${dir} --name NAME' first`);
  let raw: Partial<SiteConfig>;
  try {
    raw = JSON.parse(readFileSync(path, "utf8")) as Partial<SiteConfig>;
  } catch (err) {
    throw new SiteConfigError(path, "is not valid JSON", { cause: err });
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new SiteConfigError(path, `must hold a JSON object of fields (siteId, listen, caFile, ...), not ${raw === null ? "null" : Array.isArray(raw) ? "an array" : typeof raw}`);
  }
  for (const key of ["siteId", "listen", "caFile", "certFile", "keyFile", "ledgerPath", "storageRoot"] as const) {
    if (typeof raw[key] !== "string" || raw[key] === "") throw new SiteConfigError(path, `field '${key}' is missing or not a string`);
  }
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(dir, p));
  return {
    siteId: raw.siteId!,
    listen: raw.listen!,
    caFile: abs(raw.caFile!),
    certFile: abs(raw.certFile!),
    keyFile: abs(raw.keyFile!),
    ...(typeof raw.crlFile === "string" && raw.crlFile !== "" ? { crlFile: abs(raw.crlFile) } : {}),
    ledgerPath: abs(raw.ledgerPath!),
    ...(raw.ledger !== undefined ? { ledger: parseLedger(raw.ledger, path) } : {}),
    storageRoot: abs(raw.storageRoot!),
    defaultMaxPoints: typeof raw.defaultMaxPoints === "number" && raw.defaultMaxPoints >= 1 ? raw.defaultMaxPoints : 24,
    ...(raw.defaultRetention !== undefined ? { defaultRetention: parseRetention(raw.defaultRetention, path) } : {}),
    compressionLevel: raw.compressionLevel,
    accel: parseAccel(process.env.QREPLICA_ACCEL ?? raw.accel ?? "auto", path),
    ...(typeof raw.advertiseHost === "string" && raw.advertiseHost !== "" ? { advertiseHost: raw.advertiseHost } : {}),
    ...(typeof raw.metricsListen === "string" && raw.metricsListen !== "" ? { metricsListen: raw.metricsListen } : {}),
    ...(raw.health !== undefined ? { health: parseHealth(raw.health, path) } : {}),
  };
}

function parseLedger(v: unknown, path: string): LedgerConfig {
  const r = parseLedgerConfig(v);
  if (!r.ok) throw new SiteConfigError(path, r.problems.join("; "));
  return r.config;
}

const HEALTH_KEYS = ["evaluateEverySeconds", "frequencySeconds", "rpoAlertSeconds", "silentAfterSeconds", "windowSeconds"] as const;

function parseHealth(v: unknown, path: string): HealthSettings {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new SiteConfigError(path, "field 'health' must be an object");
  const out: HealthSettings = {};
  for (const [key, value] of Object.entries(v)) {
    if (!(HEALTH_KEYS as readonly string[]).includes(key)) throw new SiteConfigError(path, `field 'health.${key}' is unknown; known: ${HEALTH_KEYS.join(", ")}`);
    if (typeof value !== "number" || !(value > 0)) throw new SiteConfigError(path, `field 'health.${key}' must be a number of seconds above 0`);
    out[key as (typeof HEALTH_KEYS)[number]] = value;
  }
  return out;
}

function parseRetention(v: unknown, path: string): RetentionSpec {
  const r = v as Partial<RetentionSpec> | null;
  if (typeof r !== "object" || r === null || !Array.isArray(r.tiers) || typeof r.minPoints !== "number") {
    throw new SiteConfigError(path, 'field \'defaultRetention\' must be { "tiers": [{ "everySeconds": n, "keepForSeconds": n }, ...], "minPoints": n }');
  }
  const spec: RetentionSpec = {
    tiers: r.tiers.map((t: unknown) => ({
      everySeconds: secondsOf((t as RetentionTier | null)?.everySeconds),
      keepForSeconds: secondsOf((t as RetentionTier | null)?.keepForSeconds),
    })),
    minPoints: r.minPoints,
  };
  const problems = retentionSpecProblems(spec);
  if (problems.length) throw new SiteConfigError(path, `field 'defaultRetention': ${problems.join("; ")}`);
  return spec;
}

/** A number as is, anything else NaN (which retentionSpecProblems names); Number() of a hostile object can throw. */
function secondsOf(v: unknown): number {
  return typeof v === "number" ? v : Number.NaN;
}

function parseAccel(v: unknown, path: string): "auto" | "kvm" | "tcg" {
  if (v === "auto" || v === "kvm" || v === "tcg") return v;
  throw new SiteConfigError(path, `field 'accel' must be auto, kvm or tcg, not ${JSON.stringify(v)}`);
}

export function saveSiteConfig(dir: string, config: SiteConfig): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeJsonAtomic(siteFile(dir), config);
}

function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, JSON.stringify(value, null, 2) + "\n", { mode: 0o600 });
  renameSync(tmp, path);
}

/** The listen host is a wildcard: it binds every address but names none a peer can dial. */
export function isWildcardHost(host: string): boolean {
  return ["0.0.0.0", "::", "[::]", "", "*"].includes(host);
}

/** `host:port` as a dialable address, IPv6 literals bracketed. */
export function hostPort(host: string, port: number): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The host of a `host:port` listen address, without IPv6 brackets. */
export function listenHost(listen: string): string {
  const host = listen.slice(0, Math.max(listen.lastIndexOf(":"), 0));
  return host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}
