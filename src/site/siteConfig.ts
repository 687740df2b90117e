import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import { z } from "zod";
import { hostPortField, intIn, numberIn, oneOf, positive, problemsText, schemaProblems, text } from "../common/configSchema.js";
import { ledgerConfigSchema, type LedgerConfig } from "../ledger/ledgerConfig.js";
import { retentionSpecProblems, type RetentionSpec } from "../policy/retentionPlan.js";
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
   * Who runs failover and test VMs: `qemu` (default), the site's own qemu-system processes; or
   * `libvirt`, domains defined from the replicated spec on `libvirtUri` (default qemu:///system).
   */
  launcher: "qemu" | "libvirt";
  libvirtUri?: string;
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

const MAX_POINTS = 100_000;
const siteFilePath = (what: string) => text(`give the ${what} (relative paths are relative to the site directory)`);

const retentionSchema = z.strictObject({
  tiers: z.array(
    z.strictObject({
      everySeconds: numberIn(0, Number.MAX_SAFE_INTEGER, "seconds between the points a tier keeps: 0 (every point) or more"),
      keepForSeconds: positive("how long the tier keeps its points, in seconds"),
    }),
  ),
  minPoints: intIn(1, MAX_POINTS, "the newest points always kept: at least 1"),
});

const healthSchema = z.strictObject({
  evaluateEverySeconds: positive("seconds (default 15)").optional(),
  frequencySeconds: positive("seconds").optional(),
  rpoAlertSeconds: positive("seconds").optional(),
  silentAfterSeconds: positive("seconds").optional(),
  windowSeconds: positive("seconds (default 3600)").optional(),
});

export const siteConfigSchema = z.strictObject({
  siteId: text("give the site's id (its certificate identity), as 'qreplica site init --name' wrote it"),
  listen: hostPortField(0, "127.0.0.1:7443 (port 0: any free port)"),
  caFile: siteFilePath("CA certificate file"),
  certFile: siteFilePath("site's certificate file"),
  keyFile: siteFilePath("site's key file"),
  crlFile: siteFilePath("the CA's revocation list (crl.pem from 'qreplica pki crl')").optional(),
  ledgerPath: siteFilePath("SQLite ledger file"),
  ledger: ledgerConfigSchema.optional(),
  storageRoot: siteFilePath("replica storage directory"),
  defaultMaxPoints: intIn(1, MAX_POINTS, "recovery points kept per VM without a policy (site init --max-points); the default is 24").optional(),
  defaultRetention: retentionSchema.optional(),
  compressionLevel: intIn(1, 19, "a zstd level: 1 (fastest) to 19 (smallest)").optional(),
  accel: oneOf(["auto", "kvm", "tcg"] as const, "the accelerator for failover and test VMs (auto: KVM when usable)").optional(),
  launcher: oneOf(["qemu", "libvirt"] as const, "who runs failover and test VMs: qemu (the site's own processes) or libvirt (domains; site init --launcher)").optional(),
  libvirtUri: text("a libvirt connection URI such as qemu:///system (used with launcher libvirt)").optional(),
  advertiseHost: text("the host agents and operators dial, e.g. replica.example.org").optional(),
  metricsListen: hostPortField(0, "127.0.0.1:9464").optional(),
  health: healthSchema.optional(),
});

export function loadSiteConfig(dir: string): SiteConfig {
  const path = siteFile(dir);
  if (!existsSync(path)) throw new SiteConfigError(path, `not a site directory: run 'qreplica site init --dir ${dir} --name NAME' first`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new SiteConfigError(path, `is not valid JSON (${(err as Error).message}): fix it, or restore it from the site's backup`, { cause: err });
  }
  return siteConfigFrom(raw, dir, path);
}

/** A parsed site.json into the site's config, or SiteConfigError naming every bad field and its fix. */
export function siteConfigFrom(raw: unknown, dir: string, path = siteFile(dir)): SiteConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new SiteConfigError(path, `must hold a JSON object of fields (siteId, listen, caFile, ...), not ${raw === null ? "null" : Array.isArray(raw) ? "an array" : typeof raw}`);
  }
  const r = siteConfigSchema.safeParse(raw, { reportInput: true });
  if (!r.success) {
    const problems = schemaProblems(siteConfigSchema, r.error);
    throw new SiteConfigError(path, problemsText(problems), { problems });
  }
  const c = r.data;
  if (c.defaultRetention) {
    const problems = retentionSpecProblems(c.defaultRetention);
    if (problems.length) throw new SiteConfigError(path, problems.map((p) => `defaultRetention.${p}`).join("; "));
  }
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(dir, p));
  return {
    siteId: c.siteId,
    listen: c.listen,
    caFile: abs(c.caFile),
    certFile: abs(c.certFile),
    keyFile: abs(c.keyFile),
    ...(c.crlFile !== undefined ? { crlFile: abs(c.crlFile) } : {}),
    ledgerPath: abs(c.ledgerPath),
    ...(c.ledger !== undefined ? { ledger: c.ledger } : {}),
    storageRoot: abs(c.storageRoot),
    defaultMaxPoints: c.defaultMaxPoints ?? 24,
    ...(c.defaultRetention !== undefined ? { defaultRetention: c.defaultRetention } : {}),
    compressionLevel: c.compressionLevel,
    accel: parseAccel(process.env.QREPLICA_ACCEL ?? c.accel ?? "auto", path),
    launcher: c.launcher ?? "qemu",
    ...(c.libvirtUri !== undefined ? { libvirtUri: c.libvirtUri } : {}),
    ...(c.advertiseHost !== undefined ? { advertiseHost: c.advertiseHost } : {}),
    ...(c.metricsListen !== undefined ? { metricsListen: c.metricsListen } : {}),
    ...(c.health !== undefined ? { health: c.health } : {}),
  };
}

function parseAccel(v: unknown, path: string): "auto" | "kvm" | "tcg" {
  if (v === "auto" || v === "kvm" || v === "tcg") return v;
  throw new SiteConfigError(path, `QREPLICA_ACCEL must be auto, kvm or tcg, not ${JSON.stringify(v)}`);
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
