import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import { SiteConfigError } from "./errors.js";

/** `<dir>/site.json`: who the site is, where it listens, its identity files. */
export interface SiteConfig {
  siteId: string;
  /** host:port of the gRPC server; port 0 picks a free one (written to run/site.address). */
  listen: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  ledgerPath: string;
  storageRoot: string;
  /** Recovery points kept per VM before the oldest is merged into the base. */
  defaultMaxPoints: number;
  compressionLevel?: number;
  /** Accelerator for VMs this site launches (failover, tests): auto = KVM when usable. */
  accel: "auto" | "kvm" | "tcg";
  /**
   * The host agents and operators dial (the first `site init --san`): written to run/site.address
   * when `listen` is a wildcard (0.0.0.0, ::), which nobody can dial. 127.0.0.1 when absent.
   */
  advertiseHost?: string;
}

/** Which primaries may replicate to this site, as Hyper-V Replica's authorization entries. */
export interface AuthorizationEntry {
  /** The primary's certificate identity (subject CN). `*` allows any certificate of the site's CA. */
  primaryIdentity: string;
  trustGroup: string;
  /** Storage root for this primary's VMs; the site default when absent. */
  storageRoot?: string;
}

export const siteFile = (dir: string) => join(dir, "site.json");
export const authorizationsFile = (dir: string) => join(dir, "authorizations.json");
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
    ledgerPath: abs(raw.ledgerPath!),
    storageRoot: abs(raw.storageRoot!),
    defaultMaxPoints: typeof raw.defaultMaxPoints === "number" && raw.defaultMaxPoints >= 1 ? raw.defaultMaxPoints : 24,
    compressionLevel: raw.compressionLevel,
    accel: parseAccel(process.env.QREPLICA_ACCEL ?? raw.accel ?? "auto", path),
    ...(typeof raw.advertiseHost === "string" && raw.advertiseHost !== "" ? { advertiseHost: raw.advertiseHost } : {}),
  };
}

function parseAccel(v: unknown, path: string): "auto" | "kvm" | "tcg" {
  if (v === "auto" || v === "kvm" || v === "tcg") return v;
  throw new SiteConfigError(path, `field 'accel' must be auto, kvm or tcg, not ${JSON.stringify(v)}`);
}

export function saveSiteConfig(dir: string, config: SiteConfig): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeJsonAtomic(siteFile(dir), config);
}

/** Read at every new connection, so `qreplica authorize` takes effect without a restart. */
export function loadAuthorizations(dir: string): AuthorizationEntry[] {
  const path = authorizationsFile(dir);
  if (!existsSync(path)) return [];
  try {
    const parsed = JSON.parse(readFileSync(path, "utf8")) as unknown;
    if (!Array.isArray(parsed)) throw new Error("expected a JSON array");
    return parsed.filter((e): e is AuthorizationEntry => typeof e === "object" && e !== null && typeof (e as AuthorizationEntry).primaryIdentity === "string");
  } catch (err) {
    throw new SiteConfigError(path, "is not a valid authorization list (fix or remove it, then 'qreplica authorize' again)", { cause: err });
  }
}

export function addAuthorization(dir: string, entry: AuthorizationEntry): AuthorizationEntry[] {
  const entries = loadAuthorizations(dir).filter((e) => e.primaryIdentity !== entry.primaryIdentity);
  entries.push(entry);
  writeJsonAtomic(authorizationsFile(dir), entries);
  return entries;
}

export function findAuthorization(entries: AuthorizationEntry[], identity: string): AuthorizationEntry | undefined {
  return entries.find((e) => e.primaryIdentity === identity) ?? entries.find((e) => e.primaryIdentity === "*");
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
